"""Contextual Anomaly Detector, open-source edition (CAD OSE) as a streaming detector.

CAD OSE is Mikhail Smirnov's detector (NAB entry "contextOSE"). This module is a
clean re-implementation written from the published description of the algorithm;
no code of the (AGPL) original is used. In short:

* **Encoding.** The value range ``[min_value, max_value]`` is cut into
  ``2**num_norm_value_bits - 1`` equal steps; the step number's bits become
  "sensor facts" (fact ``2*i + bit_i`` for bit ``i``).
* **Contexts.** A context is a pair (left semi-context, right semi-context): a set
  of facts seen at the previous step (the previous sensor facts plus the previous
  step's active "neurons", i.e. context ids) and a set of facts of the current step.
  Every step stores the *zero-level* context (whole previous fact group, whole
  current sensor facts). When that context is new, the step also learns
  *crossed* contexts: intersections of the previous fact group with stored
  zero-level contexts' left sides (at most ``max_left_semi_contexts_length``
  facts) paired with the part of their right side the current facts confirm.
* **Prediction.** Contexts whose left side is wholly contained in the previous
  fact group are "selected"; those whose right side is wholly present now are
  "active" (their counter grows). The ``max_active_neurons_num`` most used active
  contexts become the neurons that join the next step's fact group.
* **Score.** ``(1 - active/selected + new/potential_new) / 2``: the share of
  selected contexts that failed, plus the share of potentially new contexts that
  really were new. After a raw score of at least ``base_threshold`` the detector
  rests: it reports 0 for the next ``rest_period`` points (the original's
  "rest period"; it also reports 0 for the first ``rest_period`` points).

Faithfulness: with NAB's settings (range = the whole series' min and max, no
margin; ``rest_period = int(probation / 5)``; ``base_threshold=0.75``,
``max_left_semi_contexts_length=7``, ``max_active_neurons_num=15``,
``num_norm_value_bits=3``) the scores equal NAB's published contextOSE results
point by point on every one of the 31 series checked (``bench/cad_faithfulness.py``).
Exact agreement needs two details of the reference run, reproduced here: the
ordering of active contexts breaks count ties by CPython 2.7's 64-bit tuple hash
of the semi-contexts' fact tuples, and learned contexts of one left semi-context
are visited in CPython 2.7 dict slot order (both only decide *which* equally
used contexts become neurons and in which order new contexts get their ids).

Value range: with ``min_value``/``max_value`` configured, values outside are
clamped into the range. Without them the range is learned online: the first
``range_warmup`` points (default: ``rest_period``) are buffered (reported as
warming up), the range is set to their min/max widened by 50 % of their spread
on each side, and the buffer is replayed into the model. Because CAD reports 0
during its first ``rest_period`` points anyway, nothing is lost when
``range_warmup <= rest_period``. A later value outside the range widens it (to
the value plus 50 % of the old range). On the NAB corpus a wide margin and a
long warm-up scored best among the few settings tried (margin 0.1/0.2/0.5/1.0,
warm-up 30 or rest_period). Learned contexts are *not* re-encoded (they hold bit facts,
not values); after a widening old contexts describe other value bands, so the
detector relearns (scores run high for a while) and the stale contexts age out
through the context cap. Widening is geometric, so it happens rarely.

Memory: CAD's context memory grows with the stream. ``max_contexts`` caps it:
when more contexts exist at the end of a step, the least recently used ones
(last activation or creation) are dropped down to 90 % of the cap, with the
semi-contexts only they used. The default (100,000; a state of ~1.6 MB at the
cap, typical real series need 50-110 kB after 10,000 points) is above what the NAB
series need (at most ~64k contexts, on the pure-noise ``art_noisy``; real series
stay below ~13k), so it never changes their results.

CAD has no expected-value band: ``value_lower_limit``/``value_upper_limit`` are
always ``None``. ``anomaly_probability`` is the CAD score in [0, 1];
``is_anomaly`` is ``score >= threshold``.

>>> det = CADDetector(min_value=0.0, max_value=10.0, rest_period=5)
>>> scores = [det.update(i * 60_000, v).anomaly_probability for i, v in enumerate([1, 5, 9] * 10)]
>>> scores[:5], round(scores[-1], 3)          # 0 while resting; a learned cycle scores low
([0.0, 0.0, 0.0, 0.0, 0.0], 0.067)
>>> r = det.update(30 * 60_000, 50.0)             # clamped to 10: a never-seen value code
>>> r.anomaly_probability >= 0.9, r.value_lower_limit, r.value_upper_limit
(True, None, None)
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from detectors.base import AnomalyResult, Detector, StateError
from detectors.explain import explanation
from detectors.params import Param, ParamError, ParamSchema

NEURON_BASE = 1 << 31
"""Neuron facts are ``NEURON_BASE + context id`` (sensor facts are small numbers)."""

RANGE_MARGIN = 0.5
"""Online range: share of the spread added on each side when the range is set or widened."""

_EVICT_TO = 0.9  # after hitting max_contexts keep this share of the cap
_MASK64 = (1 << 64) - 1
_CAD_EXPLANATION = explanation("pattern", "cad")
_GROW = 256  # initial capacity of the context and left columns (doubled when full)
_SELECTION_CACHE = 4096  # most (fact group, code) selections kept between two learning steps
_CONTEXT_COLUMNS = ("_c_count", "_c_used", "_c_left", "_c_right", "_c_id", "_c_lhash", "_c_rhash")


def _grown(col: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros(size, dtype=col.dtype)
    out[: len(col)] = col
    return out


def py27_tuple_hash(items: tuple[int, ...]) -> int:
    """CPython 2.7's hash of a tuple of non-negative ints on a 64-bit platform.

    The reference results rank equally used contexts by this hash; reproducing it
    keeps the detector bit-identical with them.

    >>> py27_tuple_hash(()), py27_tuple_hash((0, 2, 5))
    (3527539, 1267307236351325238)
    """
    x = 0x345678
    mult = 1000003
    n = len(items)
    for y in items:
        n -= 1
        x = ((x ^ y) * mult) & _MASK64
        mult += 82520 + n + n
    x = (x + 97531) & _MASK64
    if x >= 1 << 63:
        x -= 1 << 64
    return -2 if x == -1 else x


def py27_dict_order(keys: list[int]) -> list[int]:
    """Iteration order of a CPython 2.7 dict after inserting distinct ints >= 0 in this order.

    >>> py27_dict_order([3, 11, 1, 19])    # 11 and 19 collide with 3 and probe onwards
    [11, 1, 3, 19]
    >>> py27_dict_order([9, 1])
    [9, 1]
    """
    size = 8
    table: list[int | None] = [None] * size

    def place(tab: list[int | None], mask: int, key: int) -> None:
        i = key & mask
        if tab[i] is not None:
            perturb = key
            while True:
                i = (i * 5 + perturb + 1) & _MASK64
                if tab[i & mask] is None:
                    i &= mask
                    break
                perturb >>= 5
        tab[i] = key

    for fill, key in enumerate(keys, 1):
        place(table, size - 1, key)
        if fill * 3 >= size * 2:  # resize to the smallest power of two > 4 * used
            size = 8
            while size <= 4 * fill:
                size <<= 1
            old, table = table, [None] * size
            for k in old:
                if k is not None:
                    place(table, size - 1, k)
    return [k for k in table if k is not None]


def _fit_dtype(arr: np.ndarray) -> np.ndarray:
    """Smallest unsigned integer array holding non-negative ``arr`` (int64 if negative)."""
    arr = np.asarray(arr, dtype=np.int64)
    if arr.size and arr.min() < 0:
        return arr
    top = int(arr.max()) if arr.size else 0
    for dt in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dt).max:
            return arr.astype(dt)
    return arr


class _Left:
    """A left semi-context: its facts and the contexts that start with it."""

    __slots__ = ("facts", "hash", "items", "length", "nneur", "rmap", "smask", "zeros", "zitems")

    def __init__(self, facts: tuple[int, ...], hsh: int, smask: int) -> None:
        self.facts = facts
        self.hash = hsh
        self.length = len(facts)
        self.smask = smask  # bit mask of the sensor facts
        self.nneur = sum(1 for f in facts if f >= NEURON_BASE)
        self.rmap: dict[int, list] = {}  # right id -> context record (insertion = id order)
        self.items: list[tuple[int, int, list]] = []  # (right id, context id, record), py27 order
        self.zeros = 0  # how many of its contexts are zero-level
        self.zitems: list[tuple[int, int, list]] = []  # the zero-level ones among items

    def reorder(self) -> None:
        order = py27_dict_order(list(self.rmap))
        self.items = [(rid, self.rmap[rid][2], self.rmap[rid]) for rid in order]
        self.zitems = [item for item in self.items if item[2][1]]


# A context record is a list: [column slot, zero_level, id, left id, right id];
# its count and last use live in the detector's context columns (CADDetector._c_count, _c_used).


class CADDetector(Detector):
    """CAD OSE anomaly score per point; see the module docstring. No value bounds."""

    name = "cad"
    probability_reaches_one = True  # the contextOSE score, 1 when nothing expected came and all is new
    state_version = 2  # 2: neuron facts stored as context id + 2 * bits (1: as NEURON_BASE + id; still read)
    params = ParamSchema(
        (
            Param("min_value", float, None, "lower end of the value range; null: learn online",
                  nullable=True),
            Param("max_value", float, None, "upper end of the value range; null: learn online",
                  nullable=True),
            Param("threshold", float, 0.95, "score at or above which a point is an anomaly",
                  minimum=0.0, maximum=1.0),
            Param("rest_period", int, 30, "points reported as 0 after a raw score >= base_threshold",
                  minimum=1),
            Param("base_threshold", float, 0.75, "raw score that starts a rest period (NAB: 0.75)",
                  minimum=0.0, maximum=1.0),
            Param("max_left_semi_contexts_length", int, 8, "most facts in a learned crossed left "
                  "semi-context (NAB: 7)", minimum=1),
            Param("max_active_neurons_num", int, 16, "active contexts carried to the next step "
                  "(NAB: 15)", minimum=1),
            Param("num_norm_value_bits", int, 3, "bits encoding the normalised value", minimum=1,
                  maximum=16),
            Param("max_contexts", int, 100_000, "cap on stored contexts (least recently used are "
                  "dropped)", minimum=100),
            Param("range_warmup", int, None, "points buffered to set the range when min/max are "
                  "null; null: rest_period", minimum=1, nullable=True),
        )
    )

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        c = self.config
        lo, hi = c["min_value"], c["max_value"]
        if (lo is None) != (hi is None):
            raise ParamError("max_value" if hi is None else "min_value",
                             "give both min_value and max_value, or neither to learn the range")
        if lo is not None and lo > hi:
            raise ParamError("max_value", f"must be >= min_value ({lo}), got {hi}")
        self._fixed = lo is not None
        self._rest = c["rest_period"]
        self._base = c["base_threshold"]
        self._max_left = c["max_left_semi_contexts_length"]
        self._max_act = c["max_active_neurons_num"]
        self._bits = c["num_norm_value_bits"]
        self._max_bin = (1 << self._bits) - 1
        # value code -> (sorted sensor facts, sensor mask)
        self._codes = []
        for code in range(self._max_bin + 1):
            facts = tuple(2 * i + ((code >> i) & 1) for i in range(self._bits))
            self._codes.append((facts, sum(1 << f for f in facts)))
        self._mask_cache: dict[int, tuple[int, ...]] = {}
        self._reset()
        if self._fixed:
            self._set_range(lo, hi)

    # -- model state ---------------------------------------------------------------------
    def _reset(self) -> None:
        self._lo = self._hi = self._step_size = float("nan")
        self._warm: list[float] | None = []  # None once the range is set
        self._widenings = 0
        self._t = 0  # points fed to the model
        self._hist: deque[float] = deque([1.0], maxlen=self._rest)  # last raw scores
        self._group: tuple[int, ...] = ()  # previous step's facts (sensor + neurons)
        self._gmask = 0
        self._lefts: dict[int, _Left] = {}
        self._rights: dict[int, tuple] = {}  # id -> (facts, hash, mask)
        self._ctx: dict[int, list] = {}
        self._next_l = self._next_r = self._next_c = 0
        self._crossed_until = 0  # left ids below this took part in the last left crossing
        # Context columns (slot order = context id order): what every step reads or
        # updates for all selected contexts at once. Left columns are indexed by left id.
        self._n = 0  # contexts in the columns
        self._c_count = np.zeros(_GROW, dtype=np.int64)  # times activated
        self._c_used = np.zeros(_GROW, dtype=np.int64)  # step of the last activation or creation
        self._c_left = np.zeros(_GROW, dtype=np.int64)
        self._c_right = np.zeros(_GROW, dtype=np.int64)
        self._c_id = np.zeros(_GROW, dtype=np.int64)
        self._c_lhash = np.zeros(_GROW, dtype=np.int64)
        self._c_rhash = np.zeros(_GROW, dtype=np.int64)
        self._l_alive = np.zeros(_GROW, dtype=bool)
        self._l_smask = np.zeros(_GROW, dtype=np.int64)
        self._l_nneur = np.zeros(_GROW, dtype=np.int64)
        self._rebuild_indexes()

    def _rebuild_indexes(self) -> None:
        self._l_by_facts: dict[tuple, int] = {}
        self._l_by_hash: dict[int, int] = {}
        self._r_by_facts: dict[tuple, int] = {}
        self._r_by_hash: dict[int, int] = {}
        self._neuron_index: dict[int, list[int]] = {}  # neuron fact -> left ids (ascending)
        self._zero_lefts: set[int] = set()
        self._neuron_arrays: dict[int, np.ndarray] = {}  # numpy copies of _neuron_index lists
        self._rcross_cache: dict[int, tuple] = {}  # sensor mask -> right crossing (rights unchanged)
        self._selection_cache: dict[tuple, tuple[int, np.ndarray]] = {}  # (group, code) -> (selected, active)
        self._hits = self._misses = 0
        for lid in sorted(self._lefts):
            self._index_left(lid, self._lefts[lid])
        for rid in sorted(self._rights):
            facts, hsh, _ = self._rights[rid]
            self._r_by_facts[facts] = rid
            self._r_by_hash.setdefault(hsh, rid)
        self._zero_sorted: list[int] | None = None

    def _left_capacity(self, size: int) -> None:
        if size > len(self._l_alive):
            size = max(2 * len(self._l_alive), size)
            self._l_alive = _grown(self._l_alive, size)
            self._l_smask = _grown(self._l_smask, size)
            self._l_nneur = _grown(self._l_nneur, size)

    def _index_left(self, lid: int, left: _Left) -> None:
        self._l_by_facts[left.facts] = lid
        self._l_by_hash.setdefault(left.hash, lid)
        self._left_capacity(lid + 1)
        self._l_alive[lid] = True
        self._l_smask[lid] = left.smask
        self._l_nneur[lid] = left.nneur
        if left.nneur:
            for f in left.facts:
                if f >= NEURON_BASE:
                    self._neuron_index.setdefault(f, []).append(lid)
                    self._neuron_arrays.pop(f, None)
        if left.zeros:
            self._zero_lefts.add(lid)
            self._zero_sorted = None

    def _set_range(self, lo: float, hi: float) -> None:
        self._lo, self._hi = float(lo), float(hi)
        span = self._hi - self._lo
        if span == 0.0:
            span = float(self._max_bin)  # as the original: a flat range maps everything to code 0
        self._step_size = span / self._max_bin

    # -- the engine API: what a detector built on CAD (detectors.default) calls --------------
    # A caller that manages the range itself builds a CAD without min/max (so its state
    # stores the range), calls set_range before the first point and then step_value per
    # point; CAD's own warm-up, widening, rest period and threshold are then not used.
    @property
    def value_range(self) -> tuple[float, float]:
        """The value range ``(lo, hi)`` codes are cut from; NaNs while it is still being learnt."""
        return self._lo, self._hi

    def set_range(self, lo: float, hi: float) -> None:
        """Set the value range now; from here on the caller manages it (no online warm-up).

        Only without ``min_value``/``max_value`` and before a point is buffered for the
        online range. Learnt contexts are not re-encoded: a changed range changes what
        their codes mean (``detectors.default`` builds a new CAD and replays instead).
        """
        if self._fixed:
            raise ValueError("cad: the range is fixed by min_value/max_value")
        if self._warm:
            raise ValueError("cad: points are buffered to learn the range; set it before the first point")
        if not lo <= hi:
            raise ValueError(f"cad: need lo <= hi, got {lo!r}, {hi!r}")
        self._warm = None
        self._set_range(lo, hi)

    def encode(self, value: float) -> int:
        """The value code of ``value``, clamped into the range (``0 .. 2**num_norm_value_bits - 1``)."""
        value = min(max(value, self._lo), self._hi)
        code = int((value - self._lo) / self._step_size)
        return min(max(code, 0), self._max_bin)

    def step_value(self, value: float) -> float:
        """Raw CAD score of ``value`` (:meth:`step` of its :meth:`encode`); the model learns it."""
        return self.step(self.encode(value))

    @property
    def context_count(self) -> int:
        """Contexts stored now (at most ``max_contexts`` after every step)."""
        return len(self._ctx)

    # -- learning ------------------------------------------------------------------------
    def _left_id(self, facts: tuple[int, ...]) -> int:
        lid = self._l_by_facts.get(facts)
        if lid is not None:
            return lid
        hsh = py27_tuple_hash(facts)
        lid = self._l_by_hash.get(hsh)
        if lid is None:  # new semi-context (a hash collision aliases, as in the original)
            lid = self._next_l
            self._next_l += 1
            smask = 0
            for f in facts:
                if f < NEURON_BASE:
                    smask |= 1 << f
            left = _Left(facts, hsh, smask)
            self._lefts[lid] = left
            self._index_left(lid, left)
        self._l_by_facts[facts] = lid
        return lid

    def _right_id(self, facts: tuple[int, ...]) -> int:
        rid = self._r_by_facts.get(facts)
        if rid is not None:
            return rid
        hsh = py27_tuple_hash(facts)
        rid = self._r_by_hash.get(hsh)
        if rid is None:
            rid = self._next_r
            self._next_r += 1
            self._rights[rid] = (facts, hsh, sum(1 << f for f in facts))
            self._r_by_hash[hsh] = rid
            self._rcross_cache.clear()
        self._r_by_facts[facts] = rid
        return rid

    def _context(self, left_facts: tuple, right_facts: tuple, zero: int) -> tuple[list, bool]:
        """The context for these facts, created when missing; returns (record, created)."""
        lid = self._left_id(left_facts)
        rid = self._right_id(right_facts)
        left = self._lefts[lid]
        rec = left.rmap.get(rid)
        if rec is not None:
            if zero and not rec[1]:
                rec[1] = 1
                left.zeros += 1
                left.zitems = [item for item in left.items if item[2][1]]
                if lid not in self._zero_lefts:
                    self._zero_lefts.add(lid)
                    self._zero_sorted = None
            return rec, False
        cid = self._next_c
        self._next_c += 1
        rhash = self._rights[rid][1]
        rec = [self._append_context(0, self._t, lid, rid, cid, left.hash, rhash), zero, cid, lid, rid]
        self._ctx[cid] = rec
        left.rmap[rid] = rec
        left.reorder()
        if zero:
            left.zeros += 1
            if lid not in self._zero_lefts:
                self._zero_lefts.add(lid)
                self._zero_sorted = None
        return rec, True

    def _top_active(self, act: np.ndarray) -> np.ndarray:
        """The max_active_neurons_num most used of the active contexts ``act``; ties are
        broken by the semi-contexts' hashes, then by id (the reference's tuple order)."""
        order = np.lexsort((self._c_id[act], self._c_rhash[act], self._c_lhash[act], self._c_count[act]))
        return act[order[-self._max_act:]]

    def _append_context(self, count: int, used: int, lid: int, rid: int, cid: int, lhash: int,
                        rhash: int) -> int:
        """Append one context to the columns; returns its slot."""
        self._selection_cache.clear()
        slot = self._n
        if slot == len(self._c_id):
            size = 2 * slot
            for name in _CONTEXT_COLUMNS:
                setattr(self, name, _grown(getattr(self, name), size))
        self._c_count[slot], self._c_used[slot] = count, used
        self._c_left[slot], self._c_right[slot], self._c_id[slot] = lid, rid, cid
        self._c_lhash[slot], self._c_rhash[slot] = lhash, rhash
        self._n = slot + 1
        return slot

    def _right_crossing(self, curmask: int) -> tuple[dict[int, tuple], set[int], np.ndarray]:
        """For the current sensor facts: right id -> the facts of it they confirm (when any),
        the right ids they wholly confirm, and the latter as a boolean column by right id.
        Depends only on the mask and the stored rights, so it is cached until a right changes."""
        hit = self._rcross_cache.get(curmask)
        if hit is None:
            rcross: dict[int, tuple] = {}
            rfull: set[int] = set()
            for rid, (_facts, _h, rmask) in self._rights.items():
                m = rmask & curmask
                if m:
                    rcross[rid] = self._facts_of_mask(m)
                    if m == rmask:
                        rfull.add(rid)
            full_col = np.zeros(self._next_r, dtype=bool)
            full_col[list(rfull)] = True
            hit = self._rcross_cache[curmask] = (rcross, rfull, full_col)
        return hit

    def _neuron_array(self, fact: int) -> np.ndarray:
        arr = self._neuron_arrays.get(fact)
        if arr is None:
            arr = self._neuron_arrays[fact] = np.asarray(self._neuron_index.get(fact, ()), dtype=np.int64)
        return arr

    # -- one step: the engine API ------------------------------------------------------------
    def step(self, code: int) -> float:
        """One CAD step on value code ``code`` (see :meth:`encode`); returns the raw score.

        Engine API: no rest period, no threshold, no range handling; the model learns
        the code. The selection and activation of stored contexts (every step, hundreds
        of contexts) run on the context columns with numpy; only the learning of
        crossed contexts (after a new zero-level context, a few % of the steps) walks
        the contexts in the reference's order, which decides new ids.
        """
        cur, curmask = self._codes[code]
        group = self._group  # the previous step's facts
        crossed_until = self._crossed_until  # the left crossing covers ids below this
        new_zero, skip = self._learn_zero_level(group, cur)
        rcross, rfull, rfull_col = self._right_crossing(curmask)

        # Between learning steps the stored contexts do not change, so the selection of
        # a (fact group, value code) pair seen since the last change is reused.
        key = (group, code)
        cached = None if new_zero else self._selection_cache.get(key)
        if cached is not None:
            self._hits += 1
            nsel, act = cached
        else:
            self._misses += 1
            full_col, ncnt = self._contained_lefts(group, crossed_until)
            nsel, act = self._select(full_col, skip, rfull_col)
            if not new_zero:
                if len(self._selection_cache) >= _SELECTION_CACHE:
                    self._selection_cache.clear()
                self._selection_cache[key] = (nsel, act)
        pct_active = len(act) / nsel if nsel else 0.0
        neurons = self._activate(act)
        pct_new = 0.0
        if new_zero:  # crossed contexts are found against the previous group, learnt after the move
            pots = self._potential_contexts(full_col, ncnt, crossed_until, skip, rcross, rfull)
        self._group = cur + neurons
        self._gmask = curmask
        if new_zero:
            pct_new = self._learn_crossed(pots, (group, cur))
        self._crossed_until = self._next_l
        self._t += 1
        if len(self._ctx) > self.config["max_contexts"]:
            self._evict()
        return (1.0 - pct_active + pct_new) / 2.0

    def _learn_zero_level(self, group: tuple[int, ...], cur: tuple[int, ...]) -> tuple[bool, int]:
        """Store the zero-level context (previous fact group, current sensor facts).

        Returns (whether it is new, the context id the selection skips): the original
        skips the new zero-level context, else context id 0.
        """
        if not group:
            return False, 0
        rec, created = self._context(group, cur, 1)
        return created, rec[2] if created else 0

    def _contained_lefts(self, group: tuple[int, ...], crossed_until: int) -> tuple[np.ndarray, np.ndarray]:
        """Left crossing of the previous fact group: (wholly contained, by left id; group neurons per left).

        A left is wholly contained when its sensor facts are in the group's and all its
        neurons are group neurons; only lefts below ``crossed_until`` take part.
        """
        nl = self._next_l
        self._left_capacity(nl)
        arrays = [self._neuron_array(f) for f in group if f >= NEURON_BASE]
        ncnt = np.bincount(np.concatenate(arrays), minlength=nl) if arrays else np.zeros(nl, dtype=np.int64)
        full_col = self._l_alive[:nl] & (ncnt == self._l_nneur[:nl]) & ((self._l_smask[:nl] & ~self._gmask) == 0)
        full_col[crossed_until:] = False
        return full_col, ncnt

    def _select(self, full_col: np.ndarray, skip: int, rfull_col: np.ndarray) -> tuple[int, np.ndarray]:
        """(selected count, slots of the active contexts): selected contexts have their left
        wholly contained; the active ones among them have their right wholly present now."""
        n = self._n
        sel = full_col[self._c_left[:n]]
        skip_rec = self._ctx.get(skip)
        if skip_rec is not None:
            sel[skip_rec[0]] = False
        return int(np.count_nonzero(sel)), np.flatnonzero(sel & rfull_col[self._c_right[:n]])

    def _activate(self, act: np.ndarray) -> tuple[int, ...]:
        """Count and stamp the active contexts; the most used become the next step's neuron facts."""
        self._c_count[act] += 1
        self._c_used[act] = self._t
        if len(act) > self._max_act:
            act = self._top_active(act)
        return tuple(sorted(NEURON_BASE + c for c in self._c_id[act].tolist()))

    def _learn_crossed(self, pots: list[tuple], zero_ctx: tuple) -> float:
        """Learn the potential crossed contexts; returns the share of them (with the new
        zero-level context) that really were new."""
        unique = dict.fromkeys(pots)
        n_uniq = len(unique) + (zero_ctx not in unique)
        n_new = 1 + sum(1 for lf, rf in unique if self._context(lf, rf, 0)[1])  # 1: the zero-level one
        return n_new / n_uniq

    def _potential_contexts(self, full_col: np.ndarray, ncnt: np.ndarray, crossed_until: int, skip: int,
                            rcross: dict[int, tuple], rfull: set[int]) -> list[tuple]:
        """Crossed contexts to learn after a new zero-level context, in the reference's order:
        left ids ascending, each left's contexts in CPython 2.7 dict order."""
        lefts = self._lefts
        gmask = self._gmask
        group = self._group
        max_left = self._max_left
        cands = [(lid, True) for lid in np.flatnonzero(full_col).tolist()]
        if self._zero_sorted is None:
            self._zero_sorted = sorted(self._zero_lefts)
        counts = ncnt.tolist()
        for lid in self._zero_sorted:
            if lid >= crossed_until:
                break
            left = lefts[lid]
            c = (left.smask & gmask).bit_count() + counts[lid]
            if 0 < c <= max_left and c < left.length:
                cands.append((lid, False))
        cands.sort()
        mask_cache = self._mask_cache
        codes_by_mask = self._facts_of_mask
        pots = []
        gset = None
        for lid, is_full in cands:
            left = lefts[lid]
            if is_full:
                if left.length > max_left:
                    continue
                for rid, cid, rec in left.items:
                    if cid != skip and rec[1] and rid not in rfull:
                        rc = rcross.get(rid)
                        if rc:
                            pots.append((left.facts, rc))
            else:
                lp = None
                for rid, cid, _rec in left.zitems:
                    if cid != skip:
                        rc = rcross.get(rid)
                        if rc:
                            if lp is None:
                                lp = mask_cache.get(left.smask & gmask) or codes_by_mask(left.smask & gmask)
                                if counts[lid]:
                                    if gset is None:
                                        gset = {f for f in group if f >= NEURON_BASE}
                                    lp += tuple(sorted(gset.intersection(left.facts)))
                            pots.append((lp, rc))
        return pots

    def _facts_of_mask(self, mask: int) -> tuple[int, ...]:
        out = self._mask_cache.get(mask)
        if out is None:
            out = self._mask_cache[mask] = tuple(f for f in range(2 * self._bits) if mask >> f & 1)
        return out

    def _evict(self) -> None:
        """Drop the least recently used contexts down to 90 % of max_contexts."""
        keep = int(self.config["max_contexts"] * _EVICT_TO)
        n = self._n
        order = np.lexsort((self._c_id[:n], self._c_used[:n]))  # by (last used, id)
        drop = order[: n - keep]
        touched = set()
        for cid in self._c_id[drop].tolist():
            rec = self._ctx.pop(cid)
            left = self._lefts[rec[3]]
            del left.rmap[rec[4]]
            if rec[1]:
                left.zeros -= 1
            touched.add(rec[3])
        for lid in touched:
            left = self._lefts[lid]
            if left.rmap:
                left.reorder()
            else:
                del self._lefts[lid]
                self._l_alive[lid] = False
        kept = np.ones(n, dtype=bool)
        kept[drop] = False
        for name in _CONTEXT_COLUMNS:
            col = getattr(self, name)
            m = int(np.count_nonzero(kept))
            col[:m] = col[:n][kept]
        self._n = int(np.count_nonzero(kept))
        for slot, cid in enumerate(self._c_id[: self._n].tolist()):
            self._ctx[cid][0] = slot
        used_r = {rec[4] for rec in self._ctx.values()}
        self._rights = {rid: v for rid, v in self._rights.items() if rid in used_r}
        self._rebuild_indexes()

    def _score(self, code: int) -> float:
        raw = self.step(code)
        out = raw if max(self._hist) < self._base else 0.0
        self._hist.append(raw)
        return out

    # -- the Detector contract -------------------------------------------------------------
    def max_state_bytes(self) -> int:
        """A bound of ``len(to_state())``: at most ``max_contexts`` contexts after every step, at
        worst each with a left and a right semi-context of its own, every number in 8 bytes;
        plus the last scores, the warm-up buffer, the fact group and the field names."""
        c = self.config
        bits = c["num_norm_value_bits"]
        group = bits + c["max_active_neurons_num"]  # sensor facts + neurons
        left = max(group, c["max_left_semi_contexts_length"])  # a zero-level left is a whole group
        per_context = 8 * (6 + (2 + left) + (2 + bits))  # columns; left id, length, facts; right's
        buffers = 8 * (c["rest_period"] + (c["range_warmup"] or c["rest_period"]) + group)
        return 4096 + c["max_contexts"] * per_context + buffers

    def _update(self, ts_ms: int, value: float) -> AnomalyResult:
        if not self._fixed:
            if self._warm is not None:
                self._warm.append(value)
                if len(self._warm) < (self.config["range_warmup"] or self._rest):
                    return AnomalyResult.warming_up()
                lo, hi = min(self._warm), max(self._warm)
                span = hi - lo or max(abs(lo), 1.0)
                self._set_range(lo - RANGE_MARGIN * span, hi + RANGE_MARGIN * span)
                buffered, self._warm = self._warm, None
                for v in buffered[:-1]:
                    self._score(self.encode(v))
            elif value > self._hi or value < self._lo:
                span = self._hi - self._lo
                lo = min(self._lo, value - RANGE_MARGIN * span)
                hi = max(self._hi, value + RANGE_MARGIN * span)
                self._set_range(lo, hi)
                self._widenings += 1
        score = self._score(self.encode(value))
        anomalous = score >= self.config["threshold"]
        # CAD has no band: its alarms are broken sequences of value bands
        return AnomalyResult(None, None, score, anomalous, _CAD_EXPLANATION if anomalous else None)

    def _pack_facts(self, facts: np.ndarray) -> np.ndarray:
        return np.where(facts >= NEURON_BASE, facts - NEURON_BASE + 2 * self._bits, facts)

    def _unpack_facts(self, packed: np.ndarray) -> np.ndarray:
        packed = packed.astype(np.int64)
        return np.where(packed >= 2 * self._bits, packed - 2 * self._bits + NEURON_BASE, packed)

    def _get_state(self) -> dict[str, Any]:
        lids = sorted(self._lefts)
        l_facts = [self._lefts[i].facts for i in lids]
        rids = sorted(self._rights)
        r_facts = [self._rights[i][0] for i in rids]
        n = self._n  # the columns are in context id order

        def ragged(seqs: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
            lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
            flat = np.fromiter((f for s in seqs for f in s), dtype=np.int64, count=int(lens.sum()))
            return _fit_dtype(lens), _fit_dtype(flat)

        l_len, l_flat = ragged(l_facts)
        # neuron facts (NEURON_BASE + id) as id + 2 * bits: small numbers, half the bytes
        l_flat = _fit_dtype(self._pack_facts(l_flat.astype(np.int64)))
        r_len, r_flat = ragged(r_facts)
        # the range and the last points' scores, then the learned memory
        return {
            "lo": self._lo,
            "hi": self._hi,
            "warm": np.asarray(self._warm if self._warm is not None else [], dtype=np.float64),
            "warming": int(self._warm is not None),
            "widenings": self._widenings,
            "t": self._t,
            "hist": np.asarray(self._hist, dtype=np.float64),
            "group": _fit_dtype(self._pack_facts(np.asarray(self._group, dtype=np.int64))),
            "next_l": self._next_l,
            "next_r": self._next_r,
            "next_c": self._next_c,
            "crossed_until": self._crossed_until,
            "l_id": _fit_dtype(np.asarray(lids, dtype=np.int64)),
            "l_len": l_len,
            "l_facts": l_flat,
            "r_id": _fit_dtype(np.asarray(rids, dtype=np.int64)),
            "r_len": r_len,
            "r_facts": r_flat,
            "c_id": _fit_dtype(self._c_id[:n]),
            "c_count": _fit_dtype(self._c_count[:n]),
            "c_zero": np.asarray([self._ctx[c][1] for c in self._c_id[:n].tolist()], dtype=np.uint8),
            "c_used": _fit_dtype(self._c_used[:n]),
            "c_left": _fit_dtype(self._c_left[:n]),
            "c_right": _fit_dtype(self._c_right[:n]),
        }

    def _set_state(self, state: dict[str, Any], version: int) -> None:
        try:
            self._reset()
            if self._fixed:
                self._set_range(self.config["min_value"], self.config["max_value"])
            else:
                self._lo, self._hi = float(state["lo"]), float(state["hi"])
                if not state["warming"]:
                    self._set_range(self._lo, self._hi)
            self._warm = [float(v) for v in state["warm"]] if state["warming"] else None
            self._widenings = int(state["widenings"])
            self._t = int(state["t"])
            self._hist = deque((float(v) for v in state["hist"]), maxlen=self._rest)
            unpack = self._unpack_facts if version >= 2 else (lambda a: a.astype(np.int64))
            self._group = tuple(unpack(state["group"]).tolist())
            self._gmask = sum(1 << f for f in self._group if f < NEURON_BASE)
            self._next_l, self._next_r = int(state["next_l"]), int(state["next_r"])
            self._next_c, self._crossed_until = int(state["next_c"]), int(state["crossed_until"])

            def unragged(lens: np.ndarray, flat: np.ndarray) -> list[tuple[int, ...]]:
                ends = np.cumsum(lens.astype(np.int64))
                values = flat.astype(np.int64).tolist()
                return [tuple(values[e - n : e]) for e, n in zip(ends.tolist(), lens.tolist(), strict=True)]

            for rid, facts in zip(state["r_id"].tolist(), unragged(state["r_len"], state["r_facts"]),
                                  strict=True):
                self._rights[rid] = (facts, py27_tuple_hash(facts), sum(1 << f for f in facts))
            for lid, facts in zip(state["l_id"].tolist(), unragged(state["l_len"], unpack(state["l_facts"])),
                                  strict=True):
                smask = sum(1 << f for f in facts if f < NEURON_BASE)
                self._lefts[lid] = _Left(facts, py27_tuple_hash(facts), smask)
            cids = state["c_id"].astype(np.int64)
            n = len(cids)
            if np.any(np.diff(cids) <= 0):
                raise ValueError("context ids are not ascending")
            size = max(_GROW, 1 << max(n - 1, 0).bit_length())
            cols = {"_c_id": cids, "_c_count": state["c_count"], "_c_used": state["c_used"],
                    "_c_left": state["c_left"], "_c_right": state["c_right"]}
            for name, values in cols.items():
                if len(values) != n:
                    raise ValueError(f"context column {name} has {len(values)} entries, not {n}")
                col = np.zeros(size, dtype=np.int64)
                col[:n] = values
                setattr(self, name, col)
            self._c_lhash, self._c_rhash = np.zeros(size, dtype=np.int64), np.zeros(size, dtype=np.int64)
            self._n = n
            lefts, rights, ctx = self._lefts, self._rights, self._ctx
            columns = zip(cids.tolist(), state["c_zero"].tolist(), state["c_left"].tolist(),
                          state["c_right"].tolist(), strict=True)
            lhashes, rhashes = [], []
            for slot, (cid, zero, lid, rid) in enumerate(columns):  # ascending ids = insertion order
                left = lefts[lid]
                rhash = rights[rid][1]
                rec = [slot, zero, cid, lid, rid]
                ctx[cid] = rec
                left.rmap[rid] = rec
                left.zeros += zero
                lhashes.append(left.hash)
                rhashes.append(rhash)
            self._c_lhash[:n], self._c_rhash[:n] = lhashes, rhashes
            for left in self._lefts.values():
                left.reorder()
            self._rebuild_indexes()
        except (KeyError, IndexError, ValueError) as err:
            raise StateError(f"cad: corrupt state: {err}") from err
