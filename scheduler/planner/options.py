"""A job's candidate schedules ("options") and their exact costs: what the solvers choose between.

A rigid option is one contiguous segment in one mode. A preemptible job also gets split options: the
cheapest slots in its window for one mode, with each resume's overhead counted; and elastic options, whose
segments each have their own mode (more GPUs in cheap hours, fewer or none in dear ones). Costs follow
``problem.evaluate`` exactly (partial last slot, overhead at each resume, a change of mode is a resume).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from scheduler.planner.problem import EPS, PJob, Problem


TIE = 1e-9  # relative: costs closer than this are equal


def _better(a: float, b: float) -> bool:
    """a < b beyond rounding noise (prefix sums make equal windows differ in the last bits)."""
    return a < b - TIE * max(1.0, abs(b)) if math.isfinite(b) else a < b


def _first_min(costs: np.ndarray) -> int:
    """Index of the cheapest entry; near-equal costs tie, and the first (earliest start) wins."""
    low = costs.min()
    return int(np.flatnonzero(costs <= low + TIE * max(1.0, abs(low)))[0])


@dataclass(frozen=True)
class Option:
    job: int  # index into problem.jobs
    mode: int
    segments: tuple[tuple[int, int], ...]  # (start_slot, end_slot exclusive), sorted
    cost: float  # objective units
    late: bool = False  # ends past the job's deadline (its deadline cannot be met)
    seg_modes: tuple[int, ...] = ()  # one mode per segment for an elastic option; empty: ``mode`` throughout

    @property
    def key(self) -> tuple[int, tuple[tuple[int, int], ...], tuple[int, ...]]:
        return self.mode, self.segments, self.seg_modes

    def mode_at(self, i: int) -> int:
        return self.seg_modes[i] if self.seg_modes else self.mode

    def gpus(self, job: PJob) -> np.ndarray:
        """GPUs used in each of ``slots()``."""
        if not self.seg_modes:
            return np.full(sum(b - a for a, b in self.segments), job.modes[self.mode].gpus)
        return np.concatenate([np.full(b - a, job.modes[m].gpus) for (a, b), m in zip(self.segments, self.seg_modes)])

    @property
    def start(self) -> int:
        return self.segments[0][0]

    @property
    def end(self) -> int:
        return self.segments[-1][1]

    @property
    def mean_slot(self) -> float:
        """When its work is done on average: what waiting is priced on. (Priced on the start, a sliver of a long
        preemptible job in front of a short one looked like the whole job started early, and the sliver won.)"""
        return sum((b - a) * (a + b) for a, b in self.segments) / (2 * sum(b - a for a, b in self.segments))

    def slots(self) -> np.ndarray:
        return np.concatenate([np.arange(a, b) for a, b in self.segments])


class Costing:
    """Per-problem precomputation: slot weights and their prefix sums."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.slot_h = problem.slot_h
        self.w = np.asarray(problem.weights(), dtype=float)
        self.prefix = np.concatenate([[0.0], np.cumsum(self.w)])
        self.horizon = problem.horizon_slots
        self.capacity = np.asarray(problem.free(), dtype=np.int64)
        self.elapsed_h = problem.slot0_elapsed_minutes / 60 if self.horizon else 0.0
        self.len_h = np.full(self.horizon, self.slot_h)  # each slot's usable hours: slot 0 may be partly past
        if self.horizon:
            self.len_h[0] -= self.elapsed_h
        self._first: dict[tuple[str, int], tuple[int, float]] = {}
        # A late slot must cost more than any plan of on-time jobs can save: 100x the dearest conceivable job.
        top_kw = max((m.power_kw for job in problem.jobs for m in job.modes), default=0.0)
        self.late_penalty = 100 * (1 + top_kw * float(np.abs(self.w).sum()) * self.slot_h)
        # Equal windows must not be a coin toss between LP vertices: in the solvers' price (not in the LP bound)
        # each slot of delay costs this much more, so the earliest of equal options wins and stays chosen.
        self.tiebreak = 1e-7 * (1 + top_kw * float(np.abs(self.w).max(initial=0.0)) * self.slot_h)
        # Per job, each slot its work waits (Option.mean_slot) costs the tie-break and the price of waiting
        # (Problem.wait_pct_per_h)
        per_kwh_slot = problem.wait_pct_per_h / 100 * (float(np.abs(self.w).mean()) if self.horizon else 0.0) * self.slot_h
        self.delay = [self.tiebreak + per_kwh_slot * job.modes[job.requested_mode].power_kw * job.work
                      / job.modes[job.requested_mode].rate for job in problem.jobs]

    def slots_needed(self, job: PJob, mode: int) -> tuple[int, float]:
        """(whole slots, fraction of the last slot used) for one contiguous run that starts after slot 0."""
        slots_f = (job.work / job.modes[mode].rate + job.overhead_h(0)) / self.slot_h
        n = max(1, math.ceil(slots_f - EPS))
        return n, slots_f - (n - 1)

    def first_run(self, job: PJob, mode: int) -> tuple[int, float]:
        """(slots, cost) of the run that starts now, in slot 0: when the daemon plans mid-slot, that run ends the
        elapsed part of a slot later than one from a slot's start, and may need one slot more."""
        key = (job.id, mode)
        if key not in self._first:
            run_h, kw = job.work / job.modes[mode].rate + job.overhead_h(0), job.modes[mode].power_kw
            first_h = min(run_h, self.len_h[0])
            n = 1 + max(0, math.ceil((run_h - first_h) / self.slot_h - EPS))
            if n > self.horizon:
                self._first[key] = (n, math.inf)
                return self._first[key]
            full = max(0, n - 2)
            tail_h = max(0.0, run_h - first_h - full * self.slot_h)
            cost = kw * (first_h * self.w[0] + self.slot_h * (self.prefix[1 + full] - self.prefix[1])
                         + (tail_h * self.w[min(n - 1, self.horizon - 1)] if n > 1 else 0.0))
            self._first[key] = (n, cost)
        return self._first[key]

    def run_end(self, job: PJob, mode: int, start: int, n: int) -> int:
        """The end of a run of ``n`` slots (as rigid_costs counts them) from ``start``."""
        return self.first_run(job, mode)[0] if start == 0 else start + n

    def rigid_costs(self, job: PJob, mode: int, last_end: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(starts, costs, n) of every contiguous run from the job's release ending by ``last_end``: each runs
        [s, s + n) but a run from slot 0, which ends at ``run_end`` (see first_run)."""
        n, frac = self.slots_needed(job, mode)
        first, last = job.release_slot, min(last_end, self.horizon) - n
        if job.start_by_slot is not None:
            last = min(last, job.start_by_slot)
        if last < first:
            return np.empty(0, dtype=np.int64), np.empty(0), n
        starts = np.arange(first, last + 1)
        full = self.prefix[starts + n - 1] - self.prefix[starts]
        costs = job.modes[mode].power_kw * self.slot_h * (full + frac * self.w[starts + n - 1])
        if first == 0 and self.elapsed_h > 0:
            n0, cost0 = self.first_run(job, mode)
            if n0 > min(last_end, self.horizon):
                return starts[1:], costs[1:], n
            costs[0] = cost0
        return starts, costs, n

    def fits(self, job: PJob, mode: int, starts: np.ndarray, n: int, free: np.ndarray,
             gpus: int | None = None) -> np.ndarray:
        """Which runs of rigid_costs' ``starts`` (consecutive) find the mode's GPUs (or ``gpus``) free throughout."""
        if not len(starts):
            return np.zeros(0, dtype=bool)
        g = job.modes[mode].gpus if gpus is None else gpus
        lo = int(starts[0])
        ok = _window_all(free[lo:int(starts[-1]) + n] >= g, n)
        if lo == 0 and self.elapsed_h > 0:
            ok[0] = bool(free[:self.first_run(job, mode)[0]].min() >= g)
        return ok

    def first_fit(self, job: PJob, mode: int, starts: np.ndarray, n: int, free: np.ndarray) -> int | None:
        """The index in ``starts`` of the earliest run that fits, looking a growing stretch ahead at a time (a plain
        queue places thousands of jobs on a horizon of thousands of slots: a whole-horizon scan each is slow)."""
        done, step = 0, max(64, 4 * n)
        while done < len(starts):
            part = starts[done:done + step]
            ok = np.flatnonzero(self.fits(job, mode, part, n, free))
            if len(ok):
                return done + int(ok[0])
            done, step = done + len(part), 4 * step
        return None

    def simulate(self, job: PJob, mode: int, segments: tuple[tuple[int, int], ...], seg_modes: tuple[int, ...] = ()
                 ) -> tuple[float, bool]:
        """(exact cost, finished) of running ``segments`` in ``mode``, or each in its ``seg_modes`` (the
        evaluate() semantics)."""
        remaining, cost = job.work, 0.0
        for i, (a, b) in enumerate(segments):
            m = job.modes[seg_modes[i] if seg_modes else mode]
            overhead_h = job.overhead_h(i)
            for t in range(a, b):
                if remaining <= EPS:
                    return cost, True
                powered_h = float(self.len_h[t])
                idle_h = min(overhead_h, powered_h)
                overhead_h -= idle_h
                progress_h = powered_h - idle_h
                if m.rate * progress_h >= remaining - EPS:
                    powered_h = idle_h + remaining / m.rate
                    remaining = 0.0
                else:
                    remaining -= m.rate * progress_h
                cost += m.power_kw * powered_h * self.w[t]
        return cost, remaining <= EPS

    def split_option(self, j: int, mode: int, free: np.ndarray, price: np.ndarray | None = None) -> Option | None:
        """The cheapest slots (by ``price``, default the weights) in the window with room for this mode."""
        job = self.problem.jobs[j]
        g = job.modes[mode].gpus
        lo, hi = job.release_slot, min(job.deadline_slot, self.horizon)
        if hi <= lo:
            return None
        window = np.arange(lo, hi)
        window = window[free[lo:hi] >= g]
        n, _ = self.slots_needed(job, mode)
        if len(window) < n:
            return None
        key = (self.w if price is None else price)[window]
        order = window[np.lexsort((window, key))]
        overhead_h = job.resume_overhead_minutes / 60
        k = n
        for _ in range(50):
            chosen = np.sort(order[:k])
            runs = 1 + int(np.count_nonzero(np.diff(chosen) != 1))
            lost_h = (runs - 1) * overhead_h + job.overhead_h(0) + (self.elapsed_h if chosen[0] == 0 else 0.0)
            needed = max(n, math.ceil((job.work / job.modes[mode].rate + lost_h) / self.slot_h - EPS))
            if needed <= k:
                break
            if needed > len(order):
                return None
            k = needed
        segments = _runs(chosen)
        cost, done = self.simulate(job, mode, segments)
        if not done:
            return None
        return Option(j, mode, _trim(self, job, mode, segments), cost)


    def elastic_option(self, j: int, free: np.ndarray, price: np.ndarray | None = None) -> Option | None:
        """A mode per slot (or none), chosen greedily by marginal cost per unit of work, as CarbonScaler does,
        but on each slot's lower convex hull of (rate, cost) so that non-concave scaling cannot mislead it; then
        whole segments, each resume's overhead counted and iterated in. ``price``: an extra cost per GPU-slot
        (the LP's capacity prices). None when no mix of modes beats one mode or nothing fits."""
        job = self.problem.jobs[j]
        if not job.preemptible or len({m.gpus for m in job.modes}) < 2:
            return None
        lo, hi = job.release_slot, min(job.deadline_slot, self.horizon)
        if hi <= lo:
            return None
        slots = np.arange(lo, hi)
        rates = np.array([m.rate for m in job.modes]) * self.slot_h
        gpus = np.array([m.gpus for m in job.modes], dtype=float)
        kwh = np.array([m.power_kw for m in job.modes]) * self.slot_h
        w = self.w[slots]
        extra = price[slots] if price is not None else np.zeros(len(slots))
        room = free[slots]
        # Each slot's hull steps (mode, work gained, cost added). A slot with a positive weight and no GPU price
        # has the hull of (rate, kWh) scaled by its weight, shared by every slot with the same room: cached.
        shared: dict[int, list[tuple[int, float, float]]] = {}
        hulls: list[list[tuple[int, float, float]]] = []
        for i in range(len(slots)):
            if w[i] > 0 and extra[i] == 0:
                key = int(room[i])
                if key not in shared:
                    shared[key] = _hull(rates, kwh, gpus <= room[i])
                hulls.append(shared[key])
                continue
            hulls.append(_hull(rates, w[i] * kwh + extra[i] * gpus, gpus <= room[i]))
        width = max((len(h) for h in hulls), default=0)
        if not width:
            return None
        step_mode = np.full((len(slots), width), -1)
        step_work = np.zeros((len(slots), width))
        step_cost = np.full((len(slots), width), np.inf)
        for i, hull in enumerate(hulls):
            for k, (m, dw, dc) in enumerate(hull):
                step_mode[i, k], step_work[i, k], step_cost[i, k] = m, dw, dc
        scale = np.where((w > 0) & (extra == 0), w, 1.0)[:, None]
        marginal = step_cost * scale / np.where(step_work > 0, step_work, 1.0)
        step_work = step_work * (self.len_h[slots] / self.slot_h)[:, None]  # a partly elapsed slot 0 gives less
        valid = step_mode >= 0
        ii, kk = np.nonzero(valid)
        order = np.lexsort((kk, ii, marginal[ii, kk]))
        ii, kk = ii[order], kk[order]
        done_after = np.cumsum(step_work[ii, kk])
        target = job.work
        for _ in range(20):
            cut = int(np.searchsorted(done_after, target - EPS))
            if cut >= len(ii):
                return None
            top = np.full(len(slots), -1)
            np.maximum.at(top, ii[:cut + 1], kk[:cut + 1])
            chosen = np.where(top >= 0, step_mode[np.arange(len(slots)), np.maximum(top, 0)], -1)
            done = float(done_after[cut])
            segments, seg_modes = _mode_runs(slots, chosen)
            # work lost to resumes, each at its segment's rate
            lost = sum(rates[m] / self.slot_h * job.overhead_h(i) for i, m in enumerate(seg_modes))
            if done >= job.work + lost - EPS:
                break
            target = job.work + lost + EPS
        else:
            return None
        if len(set(seg_modes)) < 2:
            return None  # one mode throughout: split_option covers it
        return self._mixed_option(j, segments, seg_modes)

    def exact_elastic(self, j: int, free: np.ndarray, time_limit_s: float) -> Option | None:
        """The cheapest mode per slot by a small MILP (HiGHS): x[t, m] runs slot t in mode m, s[t, m] marks a
        segment starting there, whose resume overhead costs work; r[t, m] is the share of slot t the job leaves
        unused because its work is done, allowed only in the last slot it runs (z[t] = 1 where any later slot
        runs), so a partly used last slot is priced as used. The first segment is credited the smallest mode's
        overhead, so a solution always finishes; its exact cost is then simulated. For small problems."""
        job = self.problem.jobs[j]
        lo, hi = job.release_slot, min(job.deadline_slot, self.horizon)
        if not job.preemptible or hi <= lo or time_limit_s <= 0.01:
            return None
        from scheduler.planner.highs import column_lp, new_highs

        n, n_modes = hi - lo, len(job.modes)
        overhead_h = job.resume_overhead_minutes / 60
        fits = [(i, m) for i in range(n) for m in range(n_modes) if job.modes[m].gpus <= free[lo + i]]
        if not fits:
            return None
        # rows: work; one mode per slot; segment starts; r <= x; r + z <= 1 per slot; z[t] >= x[t+1]; z[t] >= z[t+1]
        slot_row0, start_row0 = 1, 1 + n
        rx_row0 = start_row0 + n * n_modes
        last_row0 = rx_row0 + len(fits)
        zx_row0, zz_row0 = last_row0 + n, last_row0 + 2 * n
        n_rows = zz_row0 + n
        switch = 1e-9 * (1 + float(np.abs(self.w[lo:hi]).max()) * max(m.power_kw for m in job.modes))
        cost, upper, integer, starts, index, value, cols = [], [], [], [0], [], [], []

        def column(c: float, rows: list[int], vals: list[float], what: tuple[int, int], whole: bool) -> None:
            cost.append(c)
            upper.append(1.0)
            integer.append(whole)
            index.extend(rows)
            value.extend(vals)
            starts.append(len(index))
            cols.append(what)

        for k, (i, m) in enumerate(fits):
            t, mode = lo + i, job.modes[m]
            work, kwh = mode.rate * self.len_h[t], mode.power_kw * self.len_h[t]
            rows, vals = [0, slot_row0 + i, start_row0 + i * n_modes + m, rx_row0 + k], [work, 1.0, 1.0, -1.0]
            if i + 1 < n:
                rows.append(start_row0 + (i + 1) * n_modes + m)
                vals.append(-1.0)
            if i > 0:
                rows.append(zx_row0 + i - 1)
                vals.append(-1.0)
            column(kwh * self.w[t], rows, vals, (i, m), True)
            # s[t, m]: a hair of cost, so that equal plans take the fewest segments
            column(switch, [0, start_row0 + i * n_modes + m], [-mode.rate * overhead_h, -1.0], (-1, m), True)
            column(-kwh * self.w[t], [0, rx_row0 + k, last_row0 + i], [-work, 1.0, 1.0], (-2, m), False)  # r[t, m]
        for i in range(n):  # z[t]
            rows, vals = [last_row0 + i, zz_row0 + i], [1.0, 1.0]
            if i + 1 < n:
                rows.append(zx_row0 + i)
                vals.append(1.0)
            if i > 0:
                rows.append(zz_row0 + i - 1)
                vals.append(-1.0)
            column(0.0, rows, vals, (-3, i), False)
        credit = 0.0 if job.resumes else min(mode.rate for mode in job.modes) * overhead_h
        row_lo = np.concatenate([[job.work - credit + EPS], np.full(n + n * n_modes + len(fits) + n, -np.inf),
                                 np.zeros(2 * n)])
        row_hi = np.concatenate([[np.inf], np.ones(n), np.zeros(n * n_modes + len(fits)), np.ones(n),
                                 np.full(2 * n, np.inf)])
        assert len(row_lo) == len(row_hi) == n_rows
        lp = column_lp(np.asarray(cost), np.asarray(upper), row_lo, row_hi, np.asarray(starts), np.asarray(index),
                       np.asarray(value), integer=integer)
        h = new_highs(time_limit_s)
        h.setOptionValue("mip_rel_gap", 1e-4)
        h.passModel(lp)
        h.run()
        if h.getInfo().primal_solution_status != 2:
            return None
        chosen = np.full(n, -1)
        for (i, m), v in zip(cols, h.getSolution().col_value):
            if i >= 0 and v > 0.5:
                chosen[i] = m
        if not (chosen >= 0).any():
            return None
        return self._mixed_option(j, *_mode_runs(np.arange(lo, hi), chosen))

    def _mixed_option(self, j: int, segments: tuple[tuple[int, int], ...], seg_modes: tuple[int, ...]
                      ) -> Option | None:
        """Segments in their modes, cut where the work is done, exactly priced; None if they do not finish it."""
        job = self.problem.jobs[j]
        segments, seg_modes = _trim_elastic(self, job, segments, seg_modes)
        total, ok = self.simulate(job, seg_modes[0], segments, seg_modes)
        if not ok:
            return None
        if len(set(seg_modes)) < 2:
            return Option(j, seg_modes[0], segments, total)
        return Option(j, seg_modes[0], segments, total, seg_modes=seg_modes)


def _window_all(ok: np.ndarray, n: int) -> np.ndarray:
    """all(ok[s:s+n]) for every start s, in linear time."""
    bad = np.concatenate([[0], np.cumsum(~ok)])
    return bad[n:] - bad[:-n] == 0


def _hull(rates: np.ndarray, costs: np.ndarray, fits: np.ndarray) -> list[tuple[int, float, float]]:
    """Steps (mode, work gained, cost added) along the lower convex hull of (rate, cost) from idle (0, 0), over
    the modes that ``fits``: a mode above the chord between two others is never worth running."""
    hull: list[tuple[float, float, int]] = [(0.0, 0.0, -1)]
    for m in np.argsort(rates, kind="stable"):
        if not fits[m]:
            continue
        point = (float(rates[m]), float(costs[m]), int(m))
        if point[0] <= hull[-1][0] + EPS:
            if len(hull) > 1 and point[1] < hull[-1][1]:
                hull[-1] = point
            continue
        while len(hull) >= 2:
            (x0, y0, _), (x1, y1, _) = hull[-2], hull[-1]
            if (y1 - y0) * (point[0] - x0) >= (point[1] - y0) * (x1 - x0):
                hull.pop()
            else:
                break
        hull.append(point)
    return [(hull[k][2], hull[k][0] - hull[k - 1][0], hull[k][1] - hull[k - 1][1]) for k in range(1, len(hull))]


def _mode_runs(slots: np.ndarray, chosen: np.ndarray) -> tuple[tuple[tuple[int, int], ...], tuple[int, ...]]:
    """Maximal runs of equal modes (-1: idle) over consecutive ``slots``."""
    segments: list[tuple[int, int]] = []
    modes: list[int] = []
    for t, m in zip(slots.tolist(), chosen.tolist()):
        if m < 0:
            continue
        if segments and segments[-1][1] == t and modes[-1] == m:
            segments[-1] = (segments[-1][0], t + 1)
        else:
            segments.append((t, t + 1))
            modes.append(m)
    return tuple(segments), tuple(modes)


def _trim_elastic(costing: Costing, job: PJob, segments: tuple[tuple[int, int], ...], seg_modes: tuple[int, ...]
                  ) -> tuple[tuple[tuple[int, int], ...], tuple[int, ...]]:
    """Drop slots after the work is done, in time order."""
    remaining = job.work
    out: list[tuple[int, int]] = []
    for i, ((a, b), m) in enumerate(zip(segments, seg_modes)):
        rate = job.modes[m].rate
        overhead_h = job.overhead_h(i)
        for t in range(a, b):
            idle_h = min(overhead_h, costing.len_h[t])
            overhead_h -= idle_h
            remaining -= rate * (costing.len_h[t] - idle_h)
            if remaining <= EPS:
                out.append((a, t + 1))
                return tuple(out), seg_modes[:len(out)]
        out.append((a, b))
    return tuple(out), seg_modes


def _runs(slots: np.ndarray) -> tuple[tuple[int, int], ...]:
    breaks = np.flatnonzero(np.diff(slots) != 1)
    starts = np.concatenate([[slots[0]], slots[breaks + 1]])
    ends = np.concatenate([slots[breaks], [slots[-1]]]) + 1
    return tuple((int(a), int(b)) for a, b in zip(starts, ends))


def _trim(costing: Costing, job: PJob, mode: int, segments: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    """Drop slots after the work is done (more were taken than needed when overheads were overestimated)."""
    m = job.modes[mode]
    remaining = job.work
    out = []
    for i, (a, b) in enumerate(segments):
        overhead_h = job.overhead_h(i)
        for t in range(a, b):
            idle_h = min(overhead_h, costing.len_h[t])
            overhead_h -= idle_h
            remaining -= m.rate * (costing.len_h[t] - idle_h)
            if remaining <= EPS:
                out.append((a, t + 1))
                return tuple(out)
        out.append((a, b))
    return tuple(out)
