"""A pure-Python CAD OSE: the same algorithm as ``detectors/cad.py``, without its vectorised selection.

CAD written the plain way, one Python loop over the stored contexts per step: an
independent oracle. ``tests/detectors/test_cad_speed_equivalence.py`` checks that the
vectorised detector gives the same scores and the same state bytes. Not registered as
a detector; see ``detectors/cad.py`` for the algorithm.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

import numpy as np

from detectors.base import AnomalyResult, Detector, StateError
from detectors.params import Param, ParamError, ParamSchema

NEURON_BASE = 1 << 31
"""Neuron facts are ``NEURON_BASE + context id`` (sensor facts are small numbers)."""

RANGE_MARGIN = 0.5
"""Online range: share of the spread added on each side when the range is set or widened."""

_EVICT_TO = 0.9  # after hitting max_contexts keep this share of the cap
_MASK64 = (1 << 64) - 1


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
    size, table = 8, [None] * 8

    def place(tab: list, mask: int, key: int) -> None:
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
        self.items = [(rid, self.rmap[rid][5], self.rmap[rid]) for rid in order]
        self.zitems = [item for item in self.items if item[2][1]]


# A context record is a list: [count, zero_level, left_hash, right_hash, last_used, id, left id, right id]


class PurePythonCAD(Detector):
    """CAD OSE anomaly score per point; see the module docstring. No value bounds."""

    name = "cad"  # same name: its state blobs are interchangeable with detectors.cad
    state_version = 1
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
        self._warm: list[float] = []
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
        self._rebuild_indexes()

    def _rebuild_indexes(self) -> None:
        self._l_by_facts: dict[tuple, int] = {}
        self._l_by_hash: dict[int, int] = {}
        self._r_by_facts: dict[tuple, int] = {}
        self._r_by_hash: dict[int, int] = {}
        self._neuron_index: dict[int, list[int]] = {}  # neuron fact -> left ids (ascending)
        self._pure: list[int] = []  # left ids without neuron facts
        self._zero_lefts: set[int] = set()
        for lid in sorted(self._lefts):
            self._index_left(lid, self._lefts[lid])
        for rid in sorted(self._rights):
            facts, hsh, _ = self._rights[rid]
            self._r_by_facts[facts] = rid
            self._r_by_hash.setdefault(hsh, rid)
        self._zero_sorted: list[int] | None = None

    def _index_left(self, lid: int, left: _Left) -> None:
        self._l_by_facts[left.facts] = lid
        self._l_by_hash.setdefault(left.hash, lid)
        if left.nneur:
            for f in left.facts:
                if f >= NEURON_BASE:
                    self._neuron_index.setdefault(f, []).append(lid)
        else:
            self._pure.append(lid)
        if left.zeros:
            self._zero_lefts.add(lid)
            self._zero_sorted = None

    def _set_range(self, lo: float, hi: float) -> None:
        self._lo, self._hi = float(lo), float(hi)
        span = self._hi - self._lo
        if span == 0.0:
            span = float(self._max_bin)  # as the original: a flat range maps everything to code 0
        self._step_size = span / self._max_bin

    def _encode(self, value: float) -> int:
        value = min(max(value, self._lo), self._hi)
        code = int((value - self._lo) / self._step_size)
        return min(max(code, 0), self._max_bin)

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
        rec = [0, zero, left.hash, self._rights[rid][1], self._t, cid, lid, rid]
        self._ctx[cid] = rec
        left.rmap[rid] = rec
        left.reorder()
        if zero:
            left.zeros += 1
            if lid not in self._zero_lefts:
                self._zero_lefts.add(lid)
                self._zero_sorted = None
        return rec, True

    def _step(self, code: int) -> float:
        """One CAD step on value code ``code``; returns the raw score."""
        cur, curmask = self._codes[code]
        group = self._group
        crossed_until = self._crossed_until  # the left crossing covers ids below this
        zero_ctx = None
        new_flag = False
        skip = 0  # the original skips the new zero-level context, else context id 0
        if group:
            zero_ctx = (group, cur)
            rec, new_flag = self._context(group, cur, 1)
            if new_flag:
                skip = rec[5]

        # right crossing: right id -> confirmed facts, and which are wholly confirmed
        rcross: dict[int, tuple] = {}
        rfull = set()
        mask_cache = self._mask_cache
        codes_by_mask = self._facts_of_mask
        for rid, (_facts, _h, rmask) in self._rights.items():
            m = rmask & curmask
            if m:
                rcross[rid] = mask_cache.get(m) or codes_by_mask(m)
                if m == rmask:
                    rfull.add(rid)

        # left crossing of the previous fact group
        gmask = self._gmask
        notg = ~gmask
        lefts = self._lefts
        ncnt: Counter = Counter()
        for f in group:
            if f >= NEURON_BASE:
                lst = self._neuron_index.get(f)
                if lst:
                    ncnt.update(lst)
        full = [lid for lid in self._pure if lid < crossed_until and not (lefts[lid].smask & notg)]
        for lid, n in ncnt.items():
            if lid < crossed_until:
                left = lefts[lid]
                if n == left.nneur and not (left.smask & notg):
                    full.append(lid)
        cands = [(lid, True) for lid in full]
        max_left = self._max_left
        if new_flag:
            if self._zero_sorted is None:
                self._zero_sorted = sorted(self._zero_lefts)
            for lid in self._zero_sorted:
                if lid >= crossed_until:
                    break
                left = lefts[lid]
                c = (left.smask & gmask).bit_count() + ncnt.get(lid, 0)
                if 0 < c <= max_left and c < left.length:
                    cands.append((lid, False))
        cands.sort()

        active = []
        pots = []
        nsel = 0
        t = self._t
        gset = None
        for lid, is_full in cands:
            left = lefts[lid]
            if is_full:
                learn = new_flag and left.length <= max_left
                for rid, cid, rec in left.items:
                    if cid == skip:
                        continue
                    nsel += 1
                    rc = rcross.get(rid)
                    if rc:
                        if rid in rfull:
                            rec[0] += 1
                            rec[4] = t
                            active.append((rec[0], rec[2], rec[3], cid))
                        elif learn and rec[1]:
                            pots.append((left.facts, rc))
            else:
                lp = None
                for rid, cid, _rec in left.zitems:
                    if cid != skip:
                        rc = rcross.get(rid)
                        if rc:
                            if lp is None:
                                lp = mask_cache.get(left.smask & gmask) or codes_by_mask(left.smask & gmask)
                                if lid in ncnt:
                                    if gset is None:
                                        gset = {f for f in group if f >= NEURON_BASE}
                                    lp += tuple(sorted(gset.intersection(left.facts)))
                            pots.append((lp, rc))

        unique = dict.fromkeys(pots)
        n_uniq = len(unique) + (1 if zero_ctx is not None and zero_ctx not in unique else 0)
        pct_active = len(active) / nsel if nsel else 0.0
        active.sort()
        neurons = sorted(NEURON_BASE + a[3] for a in active[-self._max_act:])
        self._group = cur + tuple(neurons)
        self._gmask = curmask

        n_new = 0
        for lf, rf in unique:
            if self._context(lf, rf, 0)[1]:
                n_new += 1
        if new_flag:
            n_new += 1
        pct_new = n_new / n_uniq if new_flag and n_uniq else 0.0
        self._crossed_until = self._next_l
        self._t = t + 1
        if len(self._ctx) > self.config["max_contexts"]:
            self._evict()
        return (1.0 - pct_active + pct_new) / 2.0

    def _facts_of_mask(self, mask: int) -> tuple[int, ...]:
        out = self._mask_cache.get(mask)
        if out is None:
            out = self._mask_cache[mask] = tuple(f for f in range(2 * self._bits) if mask >> f & 1)
        return out

    def _evict(self) -> None:
        """Drop the least recently used contexts down to 90 % of max_contexts."""
        keep = int(self.config["max_contexts"] * _EVICT_TO)
        order = sorted(self._ctx.values(), key=lambda r: (r[4], r[5]))
        touched = set()
        for rec in order[: len(order) - keep]:
            del self._ctx[rec[5]]
            left = self._lefts[rec[6]]
            del left.rmap[rec[7]]
            if rec[1]:
                left.zeros -= 1
            touched.add(rec[6])
        for lid in touched:
            left = self._lefts[lid]
            if left.rmap:
                left.reorder()
            else:
                del self._lefts[lid]
        used_r = {rec[7] for rec in self._ctx.values()}
        self._rights = {rid: v for rid, v in self._rights.items() if rid in used_r}
        self._rebuild_indexes()

    def _score(self, code: int) -> float:
        raw = self._step(code)
        out = raw if max(self._hist) < self._base else 0.0
        self._hist.append(raw)
        return out

    # -- the Detector contract -------------------------------------------------------------
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
                    self._score(self._encode(v))
            elif value > self._hi or value < self._lo:
                span = self._hi - self._lo
                lo = min(self._lo, value - RANGE_MARGIN * span)
                hi = max(self._hi, value + RANGE_MARGIN * span)
                self._set_range(lo, hi)
                self._widenings += 1
        score = self._score(self._encode(value))
        return AnomalyResult(None, None, score, score >= self.config["threshold"])

    def _get_state(self) -> dict[str, Any]:
        lids = sorted(self._lefts)
        l_facts = [self._lefts[i].facts for i in lids]
        rids = sorted(self._rights)
        r_facts = [self._rights[i][0] for i in rids]
        cids = sorted(self._ctx)
        recs = [self._ctx[i] for i in cids]

        def ragged(seqs: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
            lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
            flat = np.fromiter((f for s in seqs for f in s), dtype=np.int64, count=int(lens.sum()))
            return _fit_dtype(lens), _fit_dtype(flat)

        l_len, l_flat = ragged(l_facts)
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
            "group": _fit_dtype(np.asarray(self._group, dtype=np.int64)),
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
            "c_id": _fit_dtype(np.asarray(cids, dtype=np.int64)),
            "c_count": _fit_dtype(np.asarray([r[0] for r in recs], dtype=np.int64)),
            "c_zero": np.asarray([r[1] for r in recs], dtype=np.uint8),
            "c_used": _fit_dtype(np.asarray([r[4] for r in recs], dtype=np.int64)),
            "c_left": _fit_dtype(np.asarray([r[6] for r in recs], dtype=np.int64)),
            "c_right": _fit_dtype(np.asarray([r[7] for r in recs], dtype=np.int64)),
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
            self._group = tuple(int(f) for f in state["group"])
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
            for lid, facts in zip(state["l_id"].tolist(), unragged(state["l_len"], state["l_facts"]),
                                  strict=True):
                smask = sum(1 << f for f in facts if f < NEURON_BASE)
                self._lefts[lid] = _Left(facts, py27_tuple_hash(facts), smask)
            columns = zip(state["c_id"].tolist(), state["c_count"].tolist(), state["c_zero"].tolist(),
                          state["c_used"].tolist(), state["c_left"].tolist(), state["c_right"].tolist(),
                          strict=True)
            for cid, count, zero, used, lid, rid in columns:  # ascending ids = insertion order
                left = self._lefts[lid]
                rec = [count, zero, left.hash, self._rights[rid][1], used, cid, lid, rid]
                self._ctx[cid] = rec
                left.rmap[rid] = rec
                left.zeros += zero
            for left in self._lefts.values():
                left.reorder()
            self._rebuild_indexes()
        except (KeyError, IndexError, ValueError) as err:
            raise StateError(f"cad: corrupt state: {err}") from err
