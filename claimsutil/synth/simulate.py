"""Month-by-month simulation of one block of patients, vectorised over patients.

Causal order inside a month: death -> coverage -> acute episodes and long-tail records -> chronic onsets
(latent factors, age, sex and present conditions set the hazards) and stage progression -> visit ->
diagnosis at the visit (confirmed or suspected) -> treatment decisions (start, add-on, switch, stop) -> the
receipt's events (the core's names, the tail's names still on the receipts, prescriptions). Diseases progress whether
or not the patient is covered; only covered visits leave records. Everything random comes from the
block's own generator, so a block's patients are the same whatever shard or process simulates them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from claimsutil.synth import catalog as cat
from claimsutil.synth import tail as tail_catalog
from claimsutil.synth.world import DATA_CUTOFF, DEATH, INSURANCE_CHANGE, World, hospital_code, seed_sequence

NULL_DAY = np.iinfo(np.int32).min  # static events (null time); sorts first
SUSPECTED_FLAG = 1


class ConditionArrays:
    """The condition catalogue as arrays (K conditions), built once per world."""

    def __init__(self, world: World):
        conds = cat.CONDITIONS
        names = cat.CONDITION_NAMES
        self.K = len(conds)
        self.index = {n: i for i, n in enumerate(names)}
        rate = np.array([c.rate for c in conds])
        self.log_rate = np.log(np.maximum(rate, 1e-300) / 12.0)  # monthly
        self.age_slope = np.array([c.age_slope for c in conds])
        self.male = np.array([c.male for c in conds])
        self.loadings = _loadings([{"metabolic": c.metabolic, "frailty": c.frailty, **c.systems} for c in conds])
        self.duration_slope = np.array([c.duration_slope for c in conds])
        self.later_code = np.array([world.code(f"ICD10/{c.later_icd}") if c.later_icd else -1 for c in conds])
        self.n_stages = np.array([len(c.stages) for c in conds])
        self.stage_code = np.full((self.K, max(self.n_stages.max(), 1)), -1, np.int64)
        self.stage_onset = np.zeros((self.K, self.stage_code.shape[1]))
        for k, c in enumerate(conds):
            self.stage_code[k, : len(c.stages)] = [world.code(f"ICD10/{x}") for x in c.stages]
            self.stage_onset[k, : len(c.stages)] = np.array(c.stage_onset) / max(sum(c.stage_onset), 1e-300)
        self.stage_rate = np.array([c.stage_rate for c in conds])
        self.stage_parents = np.zeros((self.K, self.K))  # [j, k]: log ratio of advancing k while j is present
        for k, c in enumerate(conds):
            for parent, lr in c.stage_parents.items():
                self.stage_parents[self.index[parent], k] = lr
        self.parents = np.zeros((self.K, self.K))  # [j, k]: log HR on k while j is present
        for k, c in enumerate(conds):
            for parent, lhr in c.parents.items():
                self.parents[self.index[parent], k] = lhr
        self.requires = np.array([self.index[c.requires] if c.requires else -1 for c in conds])
        self.sex_only = [c.sex_only for c in conds]
        self.trigger = [cat.ACUTE_NAMES.index(c.trigger) if c.trigger else -1 for c in conds]
        self.trigger_prob = np.array([c.trigger_prob for c in conds])
        self.detect = np.array([c.detect for c in conds])
        self.symptomatic = np.array([c.symptomatic for c in conds])
        self.suspect = np.array([c.suspect for c in conds])
        self.suspect_before = np.array([c.suspect_before for c in conds])
        self.prior_dx = np.array([c.prior_dx for c in conds])
        self.death = np.array([c.death for c in conds])
        self.code = np.array([world.code(f"ICD10/{c.icd}") for c in conds])
        self.regimens = [_RegimenArrays(c.regimen, world, self.index) if c.regimen else None for c in conds]


class _RegimenArrays:
    def __init__(self, reg: cat.Regimen, world: World, cond_index: dict[str, int]):
        self.reg = reg
        self.options = np.array([world.drug_index[d] for d in reg.options])
        self.n_first = len(reg.first)
        self.first_log_w = np.log(np.array(reg.first_weights))
        self.addon_bits = np.array([reg.options.index(d) for d in reg.addon], dtype=np.int64)
        self.bit_range = np.arange(len(self.options))
        self.addon_log_w = np.log(0.6) * np.arange(len(reg.addon))  # earlier add-ons preferred
        self.option_class = np.array([world.drug_class_index(d) for d in reg.options])
        self.boosts = [
            (world.classes.index(cls), cond_index[cond], lw)
            for cls, by_cond in reg.boost.items()
            for cond, lw in by_cond.items()
        ]


def _loadings(rows: list[dict[str, float]]) -> np.ndarray:
    """(rows, latents) loadings from {latent name: loading} dicts."""
    out = np.zeros((len(rows), len(cat.LATENTS)))
    for i, row in enumerate(rows):
        for name, value in row.items():
            out[i, cat.LATENTS.index(name)] = value
    return out


def draw_latents(rng: np.random.Generator, age0: np.ndarray) -> np.ndarray:
    """(n, latents) standard-normal factors; frailty grows with age; each organ system mixes its parents."""
    z = rng.standard_normal((len(age0), len(cat.LATENTS)))
    z[:, 1] = 0.5 * (age0 - 60.0) / 15.0 + np.sqrt(0.75) * z[:, 1]
    for j, name in enumerate(cat.LATENTS[3:], 3):
        parents = cat.SYSTEM_PARENTS[name]
        own = np.sqrt(1.0 - sum(w * w for w in parents.values()))
        z[:, j] = own * z[:, j] + sum(w * z[:, cat.LATENTS.index(p)] for p, w in parents.items())
    return z


class AcuteArrays:
    def __init__(self, world: World):
        acutes = cat.ACUTES
        self.A = len(acutes)
        self.log_rate = np.log(np.array([a.rate for a in acutes]) / 12.0)
        self.age_slope = np.array([a.age_slope for a in acutes])
        self.male = np.array([a.male for a in acutes])
        self.frailty = np.array([a.frailty for a in acutes])
        self.loadings = _loadings([a.systems for a in acutes])  # (A, latents); frailty is the column above
        self.suspected_share = np.array([a.suspected_share for a in acutes])
        self.days = np.array([a.days for a in acutes], dtype=np.float32)
        self.code = np.array([world.code(f"ICD10/{a.icd}") for a in acutes])
        self.season = np.zeros((self.A, 12))  # log multiplier by calendar month (0 = January)
        for i, a in enumerate(acutes):
            bump = a.winter * np.isin(np.arange(12), [11, 0, 1]) + a.spring * np.isin(np.arange(12), [1, 2, 3])
            self.season[i] = bump - np.log(np.mean(np.exp(bump)))  # annual mean multiplier stays 1
        self.choices = [
            [(np.array([world.drug_index[d] for d in ch.options]), np.log(np.array(ch.weights)), ch.prob, ch.habit)
             for ch in a.drugs]
            for a in acutes
        ]  # fmt: skip


@dataclass
class BlockOutput:
    """What one block produces: events (MEDS rows before formatting) and ground truth."""

    subject_id: np.ndarray
    events: dict[str, np.ndarray]  # pid, day, code, value, flag, reason
    subjects: dict[str, np.ndarray]  # one row per patient
    hazards: dict[str, np.ndarray]  # one row per covered patient-month
    tail_history: dict[str, np.ndarray]  # one row per confirmed tail category entering a patient's history


@dataclass
class _Events:
    parts: list[tuple[np.ndarray, ...]] = field(default_factory=list)

    def add(self, pid, day, code, value=None, flag=None, reason=None) -> None:
        n = len(pid)
        if n == 0:
            return
        day = np.broadcast_to(np.asarray(day, dtype=np.int32), (n,))
        code = np.broadcast_to(np.asarray(code, dtype=np.int32), (n,))
        value = np.full(n, np.nan, np.float32) if value is None else np.broadcast_to(value, (n,))
        flag = np.zeros(n, np.int8) if flag is None else np.broadcast_to(flag, (n,))
        reason = np.zeros(n, np.int8) if reason is None else np.broadcast_to(reason, (n,))
        self.parts.append((pid.astype(np.int32), day, code, value.astype(np.float32), flag, reason))

    def collect(self) -> dict[str, np.ndarray]:
        cols = [np.concatenate(c) for c in zip(*self.parts, strict=True)]
        pid, day, code = cols[:3]
        # One int64 sort key (patient, day, code) sorts several times faster than a 3-key lexsort.
        # Bits: patient (< 2**27) | day + 2**17 (0 for static rows; days after 1611 fit in 18 bits) | code (16).
        day_key = np.where(day == NULL_DAY, 0, day.astype(np.int64) + (1 << 17))
        key = (pid.astype(np.int64) << 34) | (day_key << 16) | code.astype(np.int64)
        order = np.argsort(key, kind="stable")
        pid, day, code, value, flag, reason = (c[order] for c in cols)
        # One line per code per receipt: an acute prescription of a drug already on the chronic list,
        # or two episodes prescribing the same drug, is a single claim line.
        keep = np.ones(len(pid), dtype=bool)
        keep[1:] = (pid[1:] != pid[:-1]) | (day[1:] != day[:-1]) | (code[1:] != code[:-1])
        return {"pid": pid[keep], "day": day[keep], "code": code[keep], "value": value[keep],
                "flag": flag[keep], "reason": reason[keep]}  # fmt: skip


def _pack_bits(flags: np.ndarray) -> np.ndarray:
    """(n, K <= 32) bool -> (n,) int32 bitmask (bit k = condition k)."""
    return (flags.astype(np.int64) << np.arange(flags.shape[1], dtype=np.int64)).sum(axis=1).astype(np.int32)


def unpack_bits(bits: np.ndarray, k: int) -> np.ndarray:
    return ((bits.astype(np.int64)[:, None] >> np.arange(k, dtype=np.int64)) & 1).astype(bool)


@dataclass(frozen=True)
class Replay:
    """Replaying patients from a recorded end-of-month state: no deaths and no coverage changes (the
    oracle follows patients who stay covered, as the labels do)."""

    month: int  # the first month replayed


def _choose(rng: np.random.Generator, log_w: np.ndarray) -> np.ndarray:
    """One categorical draw per row of log weights (-inf = unavailable); -1 where nothing is available."""
    w = np.exp(log_w - np.max(log_w, axis=1, keepdims=True, initial=-1e300))
    w[~np.isfinite(log_w)] = 0.0
    cum = np.cumsum(w, axis=1)
    total = cum[:, -1]
    u = rng.random(len(log_w)) * total
    pick = (cum <= u[:, None]).sum(axis=1)
    return np.where(total > 0, np.minimum(pick, log_w.shape[1] - 1), -1)


def _choice_probs(log_w: np.ndarray) -> np.ndarray:
    w = np.exp(log_w - np.max(log_w, axis=1, keepdims=True, initial=-1e300))
    w[~np.isfinite(log_w)] = 0.0
    total = w.sum(axis=1, keepdims=True)
    return np.divide(w, total, out=np.zeros_like(w), where=total > 0)


class BlockSimulator:
    """Simulates `n` patients of block `block` over the world's window; call `run()` once."""

    def __init__(self, world: World, conds: ConditionArrays, acutes: AcuteArrays, block: int, n: int):
        self.w, self.c, self.a = world, conds, acutes
        self.n, self.T = n, world.params.months
        self.rng = np.random.default_rng(seed_sequence(world.params.seed, 1, block))
        self.ev = _Events()
        self._detect_cache = None
        self.truth_rows: list[dict[str, np.ndarray]] = []
        self.replay: Replay | None = None  # set only when the oracle replays recorded states
        self._init_patients()

    @classmethod
    def from_state(
        cls, world: World, conds: ConditionArrays, acutes: AcuteArrays, rng, traits: dict, state: dict, replay: Replay
    ) -> BlockSimulator:
        """Patients rebuilt from recorded traits (male, hosp, age0, latent) and an end-of-month state (has, dx,
        pending, reg, last_zoster, onset and dx months, and optionally tail_hist: the confirmed tail categories
        of the history), alive and covered, to replay their future from `replay.month` (the oracle). Long-tail
        names already on the receipts are not part of the state: they change no hazard, visit or treatment of
        the core."""
        sim = cls.__new__(cls)
        n = len(traits["male"])
        sim.w, sim.c, sim.a, sim.n, sim.T, sim.rng = world, conds, acutes, n, world.params.months, rng
        sim.ev, sim._detect_cache, sim.truth_rows, sim.replay = _Events(), None, [], replay
        sim.male, sim.hosp, sim.age0, sim.latent = traits["male"], traits["hosp"], traits["age0"], traits["latent"]
        sim.status, sim.alive = np.ones(n, np.int8), np.ones(n, bool)
        sim.gap_left, sim.death_month = np.zeros(n, np.int32), np.full(n, -1, np.int32)
        sim._set_static_hazards()
        sim.has, sim.dx, sim.pending = state["has"], state["dx"], state["pending"]
        sim.reg, sim.last_zoster = state["reg"].astype(np.int32), state["last_zoster"].astype(np.int32)
        sim.onset, sim.dx_month = state["onset"].astype(np.int16), state["dx_month"].astype(np.int16)
        sim.stage = np.where(sim.has, 1, 0).astype(np.int8)  # the stage changes only the code written
        sim.spec_u = rng.random(n)
        sim._init_tail()
        if state.get("tail_hist") is not None:
            sim.tail_hist = state["tail_hist"].astype(np.int16)
            sim.tail_hist_n = (sim.tail_hist >= 0).sum(axis=1).astype(np.int16)
        return sim

    # ---------------------------------------------------------------- patients and history before the window
    def _init_patients(self) -> None:
        rng, n, hosp_t = self.rng, self.n, self.w.hospitals
        self.male = rng.random(n) < 0.47
        self.hosp = rng.choice(len(hosp_t.weight), size=n, p=hosp_t.weight)
        age = 20.0 + 75.0 * rng.beta(2.0, 1.5, n) + hosp_t.age_shift[self.hosp]
        self.age0 = np.clip(age, 20.0, 99.0)  # age at the window start, years
        self.birth_day = (self.w.month_days[0] - np.round(self.age0 * 365.25)).astype(np.int32)
        self.latent = draw_latents(rng, self.age0)
        self.spec_u = rng.random(n)  # the patient's doctor: codes subcategories if below the hospital's share
        self.enter = np.where(rng.random(n) < 0.55, 0, rng.integers(1, self.T, n))
        self.status = np.zeros(n, np.int8)  # 0 not yet entered, 1 covered, 2 in a gap, 3 left for good
        self.gap_left = np.zeros(n, np.int32)
        self.alive = np.ones(n, bool)
        self.death_month = np.full(n, -1, np.int32)
        K = self.c.K
        self._set_static_hazards()
        self.has = np.zeros((n, K), bool)
        self.onset = np.full((n, K), np.iinfo(np.int16).min, np.int16)  # month index; min = never
        self.dx = np.zeros((n, K), bool)
        self.dx_month = np.full((n, K), np.iinfo(np.int16).min, np.int16)
        self.reg = np.zeros((n, K), np.int32)  # bitmask over each regimen's options
        self.pending = np.zeros((n, K), bool)  # suspected names on the last receipt
        self.last_zoster = np.full(n, -99, np.int32)
        self.stage = np.zeros((n, K), np.int8)  # 1.. for conditions with stages (CKD), 0 = absent
        self._init_tail()
        self._burn_in()
        self._prior_care()

    def _set_static_hazards(self) -> None:
        """Sex restrictions and the part of each onset log-hazard fixed by sex and the latent factors."""
        self.allowed = np.ones((self.n, self.c.K), bool)
        for k, sex in enumerate(self.c.sex_only):
            if sex:
                self.allowed[:, k] = self.male if sex == "M" else ~self.male
        self.base_log = self.c.log_rate + np.outer(self.male, self.c.male) + self.latent @ self.c.loadings.T

    def _burn_in(self) -> None:
        """Yearly onsets from age 20 to the window start, so prevalence at entry follows the same model."""
        c, rng = self.c, self.rng
        zoster = cat.ACUTES[cat.ACUTE_NAMES.index("herpes_zoster")]
        log_rate = self.base_log.copy()
        for k in range(c.K):
            if c.trigger[k] >= 0:  # e.g. post-herpetic neuralgia: zoster rate x 3 months x onset probability
                log_rate[:, k] = np.log(zoster.rate / 12 * 3 * c.trigger_prob[k]) + self.latent[:, 1] * zoster.frailty
        for y in range(int(np.ceil(self.age0.max() - 20.0))):
            a = 20.0 + y + 0.5
            active = a < self.age0
            month = -np.round((self.age0 - a) * 12)  # (n,) this year's month index relative to the window
            logh = log_rate + c.age_slope * (a - 60.0) / 10.0 + self.has @ c.parents + self._duration_log(month)
            p = -np.expm1(-12.0 * np.exp(logh))
            ok = self._requirements_met()
            self._advance_stages(active, 1.0)
            new = active[:, None] & ~self.has & ok & (rng.random(p.shape) < p)
            self.has |= new
            self.onset[new] = month.astype(np.int16)[np.nonzero(new)[0]]
            self._new_stages(new)

    def _duration_log(self, month: np.ndarray | int) -> np.ndarray:
        """(n, K) log hazard ratios of complications for the years since their required condition began."""
        c = self.c
        out = np.zeros((self.n, c.K))
        for k in np.nonzero(c.duration_slope)[0]:
            years = (month - self.onset[:, c.requires[k]].astype(np.float64)) / 12.0
            out[:, k] = c.duration_slope[k] * np.clip(years, 0.0, 40.0)  # never-onset rows are masked later
        return out

    def _new_stages(self, new: np.ndarray) -> None:
        """The stage at onset of each new staged condition."""
        for k in np.nonzero(self.c.n_stages)[0]:
            rows = np.nonzero(new[:, k])[0]
            if len(rows):
                cum = np.cumsum(self.c.stage_onset[k, : self.c.n_stages[k]])
                self.stage[rows, k] = 1 + np.searchsorted(cum, self.rng.random(len(rows)) * cum[-1], side="right")

    def _advance_stages(self, active: np.ndarray, years: float) -> None:
        """Staged conditions advance one stage with their yearly rate, raised by the conditions present."""
        c = self.c
        for k in np.nonzero(c.n_stages)[0]:
            p_year = np.minimum(c.stage_rate[k] * np.exp(self.has @ c.stage_parents[:, k]), 1.0)
            p = -np.expm1(np.log1p(-np.minimum(p_year, 1.0 - 1e-12)) * years)
            go = active & self.has[:, k] & (self.stage[:, k] < c.n_stages[k]) & (self.rng.random(self.n) < p)
            self.stage[go, k] += 1

    def _requirements_met(self) -> np.ndarray:
        ok = self.allowed.copy()
        req = self.c.requires
        for k in np.nonzero(req >= 0)[0]:
            ok[:, k] &= self.has[:, req[k]]
        return ok

    def _prior_care(self) -> None:
        """Conditions present at the window start: diagnosed before, and often already treated."""
        rng, c = self.rng, self.c
        self.dx = self.has & (rng.random(self.has.shape) < c.prior_dx)
        self.dx_month[self.dx] = -1  # diagnosed before the window, month unknown
        for k, ra in enumerate(c.regimens):
            if ra is None:
                continue
            treated = np.nonzero(self.dx[:, k] & (rng.random(self.n) < ra.reg.treated_at_entry))[0]
            self._start(k, treated, 0)
            extra = treated[rng.random(len(treated)) < 0.3]
            self._add_on(k, extra, 0)

    # ---------------------------------------------------------------- treatment decisions
    def _first_line_log_w(self, k: int, idx: np.ndarray, t: int) -> np.ndarray:
        ra, hp = self.c.regimens[k], self.w.hospitals
        opts = ra.options[: ra.n_first]
        h = self.hosp[idx, None]
        cls = ra.option_class[: ra.n_first]
        logw = ra.first_log_w + hp.drug_pref[h, opts] + np.where(cls >= 0, hp.class_pref[h, np.maximum(cls, 0)], 0.0)
        for class_i, cond_k, lw in ra.boosts:
            logw = logw + np.where(cls == class_i, lw, 0.0) * self.dx[idx, cond_k][:, None]
        return np.where(self.w.launch_month[opts] <= t, logw, -np.inf)

    def _addon_log_w(self, k: int, idx: np.ndarray, t: int) -> np.ndarray:
        ra, hp = self.c.regimens[k], self.w.hospitals
        bits = ra.addon_bits
        drugs_ = ra.options[bits]
        logw = ra.addon_log_w + 0.5 * hp.drug_pref[self.hosp[idx, None], drugs_]
        active = (self.reg[idx][:, k, None] >> bits) & 1
        ok = (active == 0) & (self.w.launch_month[drugs_] <= t)
        return np.where(ok, logw, -np.inf)

    def _start(self, k: int, idx: np.ndarray, t: int) -> None:
        if len(idx):
            pick = _choose(self.rng, self._first_line_log_w(k, idx, t))
            self.reg[idx, k] |= np.where(pick >= 0, 1 << np.maximum(pick, 0), 0)

    def _add_on(self, k: int, idx: np.ndarray, t: int) -> None:
        ra = self.c.regimens[k]
        if len(idx) and len(ra.addon_bits):
            pick = _choose(self.rng, self._addon_log_w(k, idx, t))
            bit = ra.addon_bits[np.maximum(pick, 0)]
            self.reg[idx, k] |= np.where(pick >= 0, 1 << bit, 0)

    def _switch(self, k: int, idx: np.ndarray, t: int) -> None:
        """Replace the first-line ingredient(s) by another first-line one (side effects, habit, price)."""
        ra = self.c.regimens[k]
        if not len(idx):
            return
        first_mask = (1 << ra.n_first) - 1
        current = self.reg[idx, k] & first_mask
        logw = self._first_line_log_w(k, idx, t)
        logw = np.where((current[:, None] >> np.arange(ra.n_first)) & 1, -np.inf, logw)
        pick = _choose(self.rng, logw)
        moved = pick >= 0
        new_bits = np.where(moved, 1 << np.maximum(pick, 0), current)
        self.reg[idx, k] = (self.reg[idx, k] & ~first_mask) | new_bits

    def _treat(self, t: int, visit: np.ndarray) -> None:
        for k, ra in enumerate(self.c.regimens):
            if ra is None:
                continue
            u = self.rng.random(self.n)
            seen = visit & self.dx[:, k]
            untreated = seen & (self.reg[:, k] == 0)
            self._start(k, np.nonzero(untreated & (u < ra.reg.start))[0], t)
            treated = seen & (self.reg[:, k] != 0) & ~untreated
            r = ra.reg
            add_p = r.add
            if r.escalate:  # add-ons become likelier the longer the condition has been treated
                years = np.where(self.dx_month[:, k] >= 0, t - self.dx_month[:, k].astype(np.int64), t + 24) / 12.0
                add_p = r.add * (1.0 + r.escalate * years)
            stop = treated & (u < r.stop)
            switch = treated & (u >= r.stop) & (u < r.stop + r.switch)
            add = treated & (u >= r.stop + r.switch) & (u < r.stop + r.switch + add_p)
            self.reg[stop, k] = 0
            self._switch(k, np.nonzero(switch)[0], t)
            self._add_on(k, np.nonzero(add)[0], t)

    # ---------------------------------------------------------------- the monthly loop
    def run(self, first_subject_id: int) -> BlockOutput:
        self._static_events()
        for t in range(self.T):
            self._month(t)
        covered = np.nonzero((self.status == 1) & self.alive)[0]
        self.ev.add(covered, self.w.month_days[self.T], self.w.code("COVERAGE/END"), reason=DATA_CUTOFF)
        return BlockOutput(
            subject_id=first_subject_id + np.arange(self.n, dtype=np.int64),
            events=self.ev.collect(),
            subjects=self._subject_truth(first_subject_id),
            hazards=self._hazard_truth(first_subject_id),
            tail_history=self._tail_history_truth(first_subject_id),
        )

    def _static_events(self) -> None:
        pid, w = np.arange(self.n), self.w
        self.ev.add(pid, NULL_DAY, np.where(self.male, w.code("GENDER/M"), w.code("GENDER/F")))
        hosp_codes = np.array([w.code(hospital_code(h)) for h in range(w.params.hospitals)])
        self.ev.add(pid, NULL_DAY, hosp_codes[self.hosp])
        self.ev.add(pid, self.birth_day, w.code("MEDS_BIRTH"))

    def _month(self, t: int) -> None:
        rng, w, replay = self.rng, self.w, self.replay
        self._t = t
        m0, m1 = int(w.month_days[t]), int(w.month_days[t + 1])
        age = self.age0 + (t + 0.5) / 12.0
        # A replay follows patients known to be alive and covered through the horizon (as labelled ones are).
        dying = self._deaths(t, age) if replay is None else np.zeros(self.n, bool)
        death_off = rng.integers(0, m1 - m0, self.n)
        if replay is None:
            self._coverage_starts(t, m0)
        covered = (self.status == 1) & self.alive
        episodes = self._acute_episodes(t, age)
        tail_hits = self._tail_hits(age, covered)
        had = self.has.copy()
        onset_h = self._onsets(t, age)
        p_visit = self._visit_probability(age)
        visit = covered & ((rng.random(self.n) < p_visit) | episodes.any(axis=1) | tail_hits.any(axis=1))
        day_off = np.floor(rng.random(self.n) * np.where(dying, death_off + 1, m1 - m0)).astype(np.int32)
        truth = self._record_truth(t, covered, had, onset_h, p_visit) if replay is None else None
        suspected = self._diagnose(t, visit)
        self._treat(t, visit)
        self._tail_new(t, age, tail_hits)
        self._receipt(np.nonzero(visit)[0], m0 + day_off, suspected, episodes)
        self._tail_receipt(t, visit, m0 + day_off)
        if truth is not None:
            self._record_state(truth, covered)
        if replay is None:
            self._coverage_ends(t, m1, covered, dying, m0 + death_off)

    def _deaths(self, t: int, age: np.ndarray) -> np.ndarray:
        """Gompertz mortality raised by frailty and disease; only after entry (a database holds the living)."""
        logh = np.log(0.002 / 12) + 0.09 * (age - 60.0) + 0.45 * self.male + 0.3 * self.latent[:, 1]
        logh = logh + self.has @ self.c.death
        dying = self.alive & (self.status != 0) & (self.rng.random(self.n) < np.exp(logh))
        self.death_month[dying] = t
        return dying

    def _coverage_starts(self, t: int, m0: int) -> None:
        back = self.status == 2
        self.gap_left[back] -= 1
        starting = self.alive & (((self.status == 0) & (self.enter == t)) | (back & (self.gap_left <= 0)))
        self.status[starting] = 1
        self.ev.add(np.nonzero(starting)[0], m0, self.w.code("COVERAGE/START"))

    def _coverage_ends(self, t: int, m1: int, covered: np.ndarray, dying: np.ndarray, death_day) -> None:
        w, rng = self.w, self.rng
        died = np.nonzero(covered & dying)[0]
        self.ev.add(died, death_day[died], w.code("MEDS_DEATH"))
        self.ev.add(died, death_day[died] + 1, w.code("COVERAGE/END"), reason=DEATH)
        self.alive &= ~dying
        # Insurance changes: job changes before retirement age are the common cause.
        age = self.age0 + (t + 0.5) / 12.0
        p_leave = 0.004 + 0.004 * (age < 65)
        leaving = covered & self.alive & (rng.random(self.n) < p_leave)
        self.ev.add(np.nonzero(leaving)[0], m1, w.code("COVERAGE/END"), reason=INSURANCE_CHANGE)
        returns = leaving & (rng.random(self.n) < 0.4)
        self.status[leaving] = 3
        self.status[returns] = 2
        self.gap_left[returns] = 1 + rng.geometric(1 / 6, self.n)[returns]

    def _acute_episodes(self, t: int, age: np.ndarray) -> np.ndarray:
        a = self.a
        cal = (self.w.start.month - 1 + t) % 12
        logp = a.log_rate + a.season[:, cal] + np.outer((age - 60.0) / 10.0, a.age_slope)
        logp = logp + np.outer(self.male, a.male) + np.outer(self.latent[:, 1], a.frailty)
        logp = logp + 0.3 * self.latent[:, 2:3] + self.latent @ a.loadings.T  # care seekers consult more
        episodes = (self.rng.random(logp.shape) < np.exp(logp)) & self.alive[:, None]
        self.last_zoster[episodes[:, cat.ACUTE_NAMES.index("herpes_zoster")]] = t
        self._acute_p = np.exp(logp)
        return episodes

    def _onsets(self, t: int, age: np.ndarray) -> np.ndarray:
        c = self.c
        logh = self.base_log + np.outer((age - 60.0) / 10.0, c.age_slope) + self.has @ c.parents
        logh = logh + self._duration_log(t)
        h = np.exp(logh)
        for k in np.nonzero(np.array(c.trigger) >= 0)[0]:
            recent = (t - self.last_zoster) < 3
            h[:, k] = recent * c.trigger_prob[k] * np.exp(c.age_slope[k] * (age - 60.0) / 10.0)
        h = np.where(self._requirements_met() & self.alive[:, None], np.minimum(h, 1.0), 0.0)
        self._advance_stages(self.alive, 1.0 / 12.0)
        new = ~self.has & (self.rng.random(h.shape) < h)
        self.has |= new
        self.onset[new] = t
        self._new_stages(new)
        return h

    def _visit_probability(self, age: np.ndarray) -> np.ndarray:
        hp, care = self.w.hospitals, self.latent[:, 2]
        p = 0.06 * np.exp(0.5 * care + 0.15 * (age - 60.0) / 10.0 + hp.visit[self.hosp])
        p = np.where(self.dx.any(axis=1), np.maximum(p, 0.3 * np.exp(0.3 * care)), p)
        p = np.where((self.reg != 0).any(axis=1), hp.chronic_visit[self.hosp], p)
        undiagnosed = self.has & ~self.dx
        p = 1.0 - (1.0 - np.minimum(p, 0.97)) * np.prod(1.0 - self.c.symptomatic * undiagnosed, axis=1)
        return p

    def _detect_probs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-visit probabilities (n, K): confirm, suspect before confirming, rule-out suspicion.
        They depend only on the hospital and the latent factors, so they are computed once."""
        if self._detect_cache is None:
            self._detect_cache = self._compute_detect_probs()
        return self._detect_cache

    def _compute_detect_probs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c, hp = self.c, self.w.hospitals
        detect = np.minimum(c.detect * hp.detect[self.hosp][:, None], 0.95)
        susp_mult = hp.suspect[self.hosp][:, None]
        before = np.minimum(c.suspect_before * susp_mult, 0.9) * (1.0 - detect)
        risk = np.exp(0.4 * self.latent[:, 0:1])  # rule-out work-ups follow the patient's risk profile
        rule_out = np.minimum(c.suspect * susp_mult * risk, 0.5) * self.allowed  # no prostate work-up in women
        return detect, before, rule_out

    def _diagnose(self, t: int, visit: np.ndarray) -> np.ndarray:
        """Confirm present conditions at visits; write suspected diagnoses (疑い) before confirmation and
        for rule-outs that are never confirmed. Returns the (n, K) suspected records of this month."""
        detect, before, rule_out = self._detect_probs()
        u = self.rng.random(self.has.shape)
        seen = visit[:, None] & ~self.dx
        undiagnosed = self.has & seen
        confirm = undiagnosed & (u < detect)
        suspected = undiagnosed & ~confirm & (u < detect + before)
        suspected |= ~self.has & seen & (u < rule_out)
        # A suspected name often stays on the next receipts until it is confirmed or dropped (中止).
        kept = self.pending & seen & ~confirm & (self.rng.random(self.has.shape) < 0.5)
        suspected |= kept
        self.pending = np.where(visit[:, None], suspected, self.pending)
        self.dx |= confirm
        self.dx_month[confirm] = t
        return suspected

    # ---------------------------------------------------------------- the receipt
    def _current_drugs(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), n_drugs) bool: every ingredient some active regimen prescribes."""
        rx = np.zeros((len(rows), len(self.w.drug_names)), bool)
        for k, ra in enumerate(self.c.regimens):
            if ra is not None:
                rx[:, ra.options] |= ((self.reg[rows, k, None] >> ra.bit_range) & 1).astype(bool)
        return rx

    def _receipt(self, rows: np.ndarray, day: np.ndarray, suspected: np.ndarray, episodes: np.ndarray) -> None:
        """One monthly receipt per visiting patient: chronic diagnoses (repeated while active), suspected
        diagnoses, the month's acute episodes, and the prescriptions."""
        if not len(rows):
            return
        c, a, ev, rng = self.c, self.a, self.ev, self.rng
        day = day[rows]
        r, k = np.nonzero(self.dx[rows])
        code = c.code[k]
        later = (c.later_code[k] >= 0) & (self.dx_month[rows[r], k] != self._t)  # I21.9, then I25.2
        code = np.where(later, c.later_code[k], code)
        stage = self.stage[rows[r], k].astype(np.int64)
        staged = (
            (c.n_stages[k] > 0)
            & (stage > 0)
            & (self.spec_u[rows[r]] < self.w.hospitals.specificity[self.hosp[rows[r]]])
        )
        code = np.where(staged, c.stage_code[k, np.maximum(stage - 1, 0)], code)
        ev.add(rows[r], day[r], code)
        r, k = np.nonzero(suspected[rows])
        ev.add(rows[r], day[r], c.code[k], flag=np.int8(1))
        r, e = np.nonzero(episodes[rows])
        flag = (rng.random(len(r)) < a.suspected_share[e]).astype(np.int8)
        ev.add(rows[r], day[r], a.code[e], flag=flag)
        rx = self._current_drugs(rows)
        r, d = np.nonzero(rx)
        ev.add(
            rows[r], day[r], self.w.drug_code[self.hosp[rows[r]], d], value=self.w.hospitals.rx_days[self.hosp[rows[r]]]
        )
        self._acute_prescriptions(rows, day, episodes)

    def _acute_prescriptions(self, rows, day, episodes) -> None:
        hp, rng = self.w.hospitals, self.rng
        for e, slots in enumerate(self.a.choices):
            r = np.nonzero(episodes[rows, e])[0]
            if not len(r):
                continue
            h = self.hosp[rows[r]]
            for options, log_w, prob, habit in slots:
                p = prob * (hp.habit[habit][h] if habit else 1.0)
                got = r[rng.random(len(r)) < np.minimum(p, 0.98)]
                if not len(got):
                    continue
                logw = log_w + hp.drug_pref[self.hosp[rows[got], None], options]
                logw = np.where(self.w.launch_month[options] <= self._t, logw, -np.inf)
                pick = _choose(rng, logw)
                ok = pick >= 0
                who = rows[got[ok]]
                self.ev.add(
                    who, day[got[ok]], self.w.drug_code[self.hosp[who], options[pick[ok]]], value=self.a.days[e]
                )

    # ---------------------------------------------------------------- the long tail (tail.py)
    def _init_tail(self) -> None:
        """Long-tail names on the patient's receipts: one row per name, until its last month (exclusive)."""
        self.tail_pid = np.zeros(0, np.int64)
        self.tail_code = np.zeros(0, np.int64)
        self.tail_drug = np.zeros(0, np.int64)  # ingredient prescribed with it, -1 none
        self.tail_days = np.zeros(0, np.float32)  # days' supply of that prescription
        self.tail_flag = np.zeros(0, np.int8)  # suspected
        self.tail_end = np.zeros(0, np.int64)
        self._tail_p = np.zeros((self.n, len(self.w.tail.systems)))
        # Confirmed tail categories of the patient's history (the first HISTORY distinct ones), and the log
        # of additions (truth: the oracle rebuilds the history from it).
        self.tail_hist = np.full((self.n, tail_catalog.HISTORY), -1, np.int16)
        self.tail_hist_n = np.zeros(self.n, np.int16)
        self.tail_log: list[tuple[np.ndarray, int, np.ndarray]] = []

    def _tail_hits(self, age: np.ndarray, covered: np.ndarray) -> np.ndarray:
        """(n, systems) bool: a new long-tail record this month in each organ system (covered patients)."""
        tt = self.w.tail
        self._tail_age = np.clip(age.astype(np.int64), 0, tail_catalog.AGES - 1)
        logp = tt.log_rate[:, self._tail_age, self.male.astype(np.int64)].T  # (n, S)
        logp = logp + tail_catalog.LOADING * self.latent[:, tt.system_latent]
        logp = logp + tail_catalog.CARE_SEEKING * self.latent[:, 2:3]
        self._tail_p = -np.expm1(-np.exp(logp))
        return (self.rng.random(logp.shape) < self._tail_p) & covered[:, None]

    def _tail_new(self, t: int, age: np.ndarray, hits: np.ndarray) -> None:
        """Which code each new record is, whether suspected, how long it stays, and its prescription."""
        r, s = np.nonzero(hits)
        if not len(r):
            return
        tt, hp, rng, m = self.w.tail, self.w.hospitals, self.rng, len(r)
        a, h = self._tail_age[r], self.hosp[r]
        group = (a * 2 + self.male[r]) * len(tt.systems) + s
        c = tt.cat_of_key[np.searchsorted(tt.cum, group + np.minimum(rng.random(m), 1.0 - 1e-12))]
        c = self._tail_linked(r, s, a, c)
        suspected = rng.random(m) < np.minimum(tt.suspected[c] * hp.suspect[h], 0.9)
        self._tail_remember(t, r[~suspected], c[~suspected])
        child = np.searchsorted(tt.child_key, c + np.minimum(rng.random(m), 1.0 - 1e-12))
        specific = self.spec_u[r] < hp.specificity[h]
        code = np.where(specific, tt.child_code[np.minimum(child, len(tt.child_code) - 1)], tt.unspecified_code[c])
        months = np.where(suspected, 1, rng.geometric(1.0 / np.maximum(tt.months[c], 1.0)))
        drug = np.full(m, -1, np.int64)
        rx = np.nonzero(~suspected & (rng.random(m) < tt.rx[c]))[0]
        if len(rx):
            opts = tt.options[c[rx]]  # (len(rx), max options), -1 padded
            ok = (opts >= 0) & (self.w.launch_month[np.maximum(opts, 0)] <= t)
            pick = _choose(rng, np.where(ok, hp.drug_pref[h[rx, None], np.maximum(opts, 0)], -np.inf))
            drug[rx] = np.where(pick >= 0, opts[np.arange(len(rx)), np.maximum(pick, 0)], -1)
        days = np.where(tt.months[c] >= 6, hp.rx_days[h], 7.0).astype(np.float32)
        keep = self.tail_end > t if t % 12 == 0 else slice(None)  # drop names that left the receipts
        self.tail_pid = np.concatenate([self.tail_pid[keep], r])
        self.tail_code = np.concatenate([self.tail_code[keep], code])
        self.tail_drug = np.concatenate([self.tail_drug[keep], drug])
        self.tail_days = np.concatenate([self.tail_days[keep], days])
        self.tail_flag = np.concatenate([self.tail_flag[keep], suspected.astype(np.int8)])
        self.tail_end = np.concatenate([self.tail_end[keep], t + months])

    def _link_candidates(self, rows: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For ROWS (ages A): the categories their confirmed history links to, (rows, HISTORY x links), and
        each one's weight (its rate share at the patient's age and sex; 0 for empty slots)."""
        tt = self.w.tail
        hist = self.tail_hist[rows]
        cand = tt.link[np.maximum(hist, 0)].reshape(len(rows), -1)
        filled = np.repeat(hist >= 0, tt.link.shape[1], axis=1) & (cand >= 0)
        sex = self.male[rows].astype(np.int64)
        weight = np.where(filled, tt.share[np.maximum(cand, 0), a[:, None], sex[:, None]], 0.0)
        return cand, weight

    def _tail_linked(self, r: np.ndarray, s: np.ndarray, a: np.ndarray, c: np.ndarray) -> np.ndarray:
        """New records R (systems S, ages A, fresh categories C): with probability LINK, where the patient's
        history links to categories of that system, the record is one of them instead."""
        tt = self.w.tail
        u = self.rng.random(len(r))
        sel = np.nonzero((u < tail_catalog.LINK) & (self.tail_hist_n[r] > 0))[0]
        if not len(sel):
            return c
        cand, weight = self._link_candidates(r[sel], a[sel])
        weight = np.where(tt.cat_system[np.maximum(cand, 0)] == s[sel, None], weight, 0.0)
        cum = np.cumsum(weight, axis=1)
        total = cum[:, -1]
        pick = (cum <= (self.rng.random(len(sel)) * total)[:, None]).sum(axis=1)
        pick = np.minimum(pick, cand.shape[1] - 1)
        linked = total > 0
        out = c.copy()
        out[sel[linked]] = cand[np.nonzero(linked)[0], pick[linked]]
        return out

    def _tail_remember(self, t: int, r: np.ndarray, c: np.ndarray) -> None:
        """Add confirmed categories C of patients R (sorted) to their histories, each once, the first HISTORY."""
        new = ~(self.tail_hist[r] == c[:, None]).any(axis=1)
        r, c = r[new], c[new]
        if not len(r):
            return
        idx = np.arange(len(r))
        rank = idx - np.maximum.accumulate(np.where(np.r_[True, r[1:] != r[:-1]], idx, 0))  # within patient
        pos = self.tail_hist_n[r].astype(np.int64) + rank
        ok = pos < tail_catalog.HISTORY
        r, c, pos = r[ok], c[ok], pos[ok]
        self.tail_hist[r, pos] = c
        self.tail_hist_n += np.bincount(r, minlength=self.n).astype(np.int16)
        if self.replay is None:
            self.tail_log.append((r.astype(np.int32), t, c.astype(np.int16)))

    def _tail_receipt(self, t: int, visit: np.ndarray, day: np.ndarray) -> None:
        """Every long-tail name still open is written on the month's receipt, with its prescription."""
        on = visit[self.tail_pid] & (self.tail_end > t)
        pid = self.tail_pid[on]
        self.ev.add(pid, day[pid], self.tail_code[on], flag=self.tail_flag[on])
        rx = on & (self.tail_drug >= 0)
        pid = self.tail_pid[rx]
        self.ev.add(pid, day[pid], self.w.drug_code[self.hosp[pid], self.tail_drug[rx]], value=self.tail_days[rx])

    def _tail_rx_probability(self, t: int, rows: np.ndarray, d: int) -> np.ndarray:
        """P(a new long-tail record this month brings a prescription of ingredient D), for ROWS."""
        tt, hp = self.w.tail, self.w.hospitals
        p = np.zeros(len(rows))
        h, a, sex = self.hosp[rows], self._tail_age[rows], self.male[rows].astype(np.int64)
        cats = tt.categories_with_drug.get(d, ())
        if cats:
            cand, weight = self._link_candidates(rows, a)
            cand_system = tt.cat_system[np.maximum(cand, 0)]
        for c in cats:
            opts = tt.options[c][tt.options[c] >= 0]
            logw = np.where(self.w.launch_month[opts] <= t, hp.drug_pref[h[:, None], opts], -np.inf)
            share = _choice_probs(logw)[:, int(np.nonzero(opts == d)[0][0])]
            confirmed = 1.0 - np.minimum(tt.suspected[c] * hp.suspect[h], 0.9)
            s = tt.cat_system[c]
            # The category's share of the system's records: the fresh draw's, and the history's links.
            in_system = np.where(cand_system == s, weight, 0.0).sum(axis=1)
            to_c = np.where(cand == c, weight, 0.0).sum(axis=1)
            linked = tail_catalog.LINK * (in_system > 0)
            cat_share = (1.0 - linked) * tt.share[c, a, sex] + linked * to_c / np.where(in_system > 0, in_system, 1.0)
            p += self._tail_p[rows, s] * cat_share * confirmed * tt.rx[c] * share
        return p

    # ---------------------------------------------------------------- ground truth (never read by models)
    def _record_truth(self, t: int, covered, had, onset_h, p_visit) -> dict | None:
        """Per covered patient-month: onset hazards, and the probability that this month's receipt carries
        a confirmed record of each tracked condition / a prescription of each tracked drug, given the state
        at the start of the month. 1 - prod(1 - p) over a horizon is the oracle's event probability."""
        rows = np.nonzero(covered)[0]
        if not len(rows):
            return None
        pv = 1.0 - (1.0 - p_visit[rows]) * np.prod(1.0 - self._acute_p[rows], axis=1) * np.prod(
            1.0 - self._tail_p[rows], axis=1
        )
        detect = self._detect_probs()[0][rows]
        out = {"pid": rows.astype(np.int32), "month": np.full(len(rows), t, np.int16)}
        for name in self.w.params.truth_conditions:
            k = self.c.index[name]
            dx = self.dx[rows, k]
            first = detect[:, k] * np.where(had[rows, k], 1.0, onset_h[rows, k])
            out[f"onset_hazard_{name}"] = np.where(had[rows, k], 0.0, onset_h[rows, k]).astype(np.float32)
            out[f"record_hazard_{name}"] = (pv * np.where(dx, 1.0, first)).astype(np.float32)
        for name in self.w.params.truth_drugs:
            out[f"rx_hazard_{name}"] = self._rx_hazard(t, rows, name, pv).astype(np.float32)
        return out

    def _record_state(self, out: dict, covered: np.ndarray) -> None:
        """The whole simulation state at the end of the month, so the oracle can replay the future from it."""
        rows = np.nonzero(covered)[0]
        out["has_bits"] = _pack_bits(self.has[rows])
        out["dx_bits"] = _pack_bits(self.dx[rows])
        out["pending_bits"] = _pack_bits(self.pending[rows])
        out["zoster_month"] = self.last_zoster[rows].astype(np.int16)
        out["regimens"] = self.reg[rows].astype(np.int16)
        self.truth_rows.append(out)

    def _rx_hazard(self, t: int, rows: np.ndarray, drug: str, pv: np.ndarray) -> np.ndarray:
        """P(a prescription of DRUG this month): a visit while on it, or a start, add-on or acute course."""
        d = self.w.drug_index[drug]
        on = np.zeros(len(rows), bool)
        p = np.zeros(len(rows))
        for k, ra in enumerate(self.c.regimens):
            if ra is None or d not in ra.options:
                continue
            bit = int(np.nonzero(ra.options == d)[0][0])
            reg, dx = self.reg[rows, k], self.dx[rows, k]
            on |= ((reg >> bit) & 1).astype(bool)
            if bit < ra.n_first:
                sel = np.nonzero(dx & (reg == 0))[0]
                p[sel] += ra.reg.start * _choice_probs(self._first_line_log_w(k, rows[sel], t))[:, bit]
            if bit in ra.addon_bits:
                col = int(np.nonzero(ra.addon_bits == bit)[0][0])
                sel = np.nonzero(reg != 0)[0]
                p[sel] += ra.reg.add * _choice_probs(self._addon_log_w(k, rows[sel], t))[:, col]
        p *= pv
        hp = self.w.hospitals
        h = self.hosp[rows]
        for e, slots in enumerate(self.a.choices):
            for options, log_w, prob, habit in slots:
                if d not in options:
                    continue
                logw = log_w + hp.drug_pref[h[:, None], options]
                logw = np.where(self.w.launch_month[options] <= t, logw, -np.inf)
                share = _choice_probs(logw)[:, int(np.nonzero(options == d)[0][0])]
                slot_p = np.minimum(prob * (hp.habit[habit][h] if habit else 1.0), 0.98)
                p += self._acute_p[rows, e] * slot_p * share
        p += self._tail_rx_probability(t, rows, d)
        on_tail = np.zeros(self.n, bool)
        on_tail[self.tail_pid[(self.tail_drug == d) & (self.tail_end > t)]] = True
        on |= on_tail[rows]
        return np.where(on, pv, np.minimum(p, 1.0))

    def _subject_truth(self, first_id: int) -> dict[str, np.ndarray]:
        never = np.iinfo(np.int16).min
        out = {
            "subject_id": first_id + np.arange(self.n, dtype=np.int64),
            "hospital": self.hosp.astype(np.int16),
            "male": self.male,
            "birth_day": self.birth_day,
            "age_at_start": self.age0,  # float64: the replay needs the exact value
            "entry_month": self.enter.astype(np.int16),
            "death_month": self.death_month.astype(np.int16),
        }
        for i, name in enumerate(cat.LATENTS):
            out[f"latent_{name}"] = self.latent[:, i]
        for k, name in enumerate(cat.CONDITION_NAMES):
            out[f"onset_month_{name}"] = np.where(self.onset[:, k] == never, -32768, self.onset[:, k])
            out[f"dx_month_{name}"] = np.where(self.dx_month[:, k] == never, -32768, self.dx_month[:, k])
        return out

    def _tail_history_truth(self, first_id: int) -> dict[str, np.ndarray]:
        """The history log, in the order of addition (month, then organ system)."""
        parts = self.tail_log or [(np.zeros(0, np.int32), 0, np.zeros(0, np.int16))]
        pid = np.concatenate([p for p, _, _ in parts])
        month = np.concatenate([np.full(len(p), t, np.int16) for p, t, _ in parts])
        category = np.concatenate([c for _, _, c in parts])
        order = np.lexsort((self.w.tail.cat_system[category], month, pid))
        return {
            "subject_id": first_id + pid[order].astype(np.int64),
            "month": month[order],
            "category": category[order],
        }

    def _hazard_truth(self, first_id: int) -> dict[str, np.ndarray]:
        if not self.truth_rows:
            return {}
        cols = {k: np.concatenate([r[k] for r in self.truth_rows]) for k in self.truth_rows[0]}
        order = np.lexsort((cols["month"], cols["pid"]))
        cols = {k: v[order] for k, v in cols.items()}
        cols["subject_id"] = first_id + cols.pop("pid").astype(np.int64)
        return cols
