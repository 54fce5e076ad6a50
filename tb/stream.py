"""cocotb AXI4-Stream source, sink and protocol monitor with random valid/ready stalls."""

import collections
import itertools
import json
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge

__all__ = ["load_ports", "pack", "unpack", "pause_patterns", "StreamSource", "StreamSink", "TB",
           "ProtocolError"]


class ProtocolError(AssertionError):
    """The DUT broke the AXI4-Stream rules (payload changed or valid dropped while stalled)."""


def load_ports(path=None):
    """The ports description written beside the emitted Verilog (``VARACCEL_PORTS``)."""
    with open(path or os.environ["VARACCEL_PORTS"]) as f:
        return json.load(f)


def _fields(port):
    return port["fields"]


def pack(port, beat):
    """Pack a beat ``{field: int}`` into the integer ``tdata`` of ``port`` (a ports-JSON stream).

    Signed fields take negative Python ints; every field must fit its width (``ValueError``).
    """
    word = 0
    for f in _fields(port):
        value = int(beat.get(f["name"], 0))
        lo = -(1 << (f["width"] - 1)) if f["signed"] else 0
        hi = (1 << (f["width"] - 1)) - 1 if f["signed"] else (1 << f["width"]) - 1
        if not lo <= value <= hi:
            raise ValueError(f"field {f['name']} = {value} does not fit {f['width']} bits")
        word |= (value & ((1 << f["width"]) - 1)) << f["offset"]
    return word


def unpack(port, word):
    """Unpack an integer ``tdata`` of ``port`` into ``{field: int}`` (signed fields sign-extended)."""
    beat = {}
    for f in _fields(port):
        value = (word >> f["offset"]) & ((1 << f["width"]) - 1)
        if f["signed"] and value >> (f["width"] - 1):
            value -= 1 << f["width"]
        beat[f["name"]] = value
    return beat


def pause_patterns(rng):
    """Stall generators, cycled by the tests: none, regular patterns, and random densities.

    Each is an infinite iterator of bools; True means "pause this cycle" (source: hold valid
    low; sink: hold ready low).
    """
    def random_pauses(p):
        seed = rng.getrandbits(32)
        local = random.Random(seed)
        while True:
            yield local.random() < p

    return {
        "none": lambda: itertools.repeat(False),
        "every_4th": lambda: itertools.cycle([False, False, False, True]),
        "half": lambda: itertools.cycle([False, True]),
        "random_30": lambda: random_pauses(0.3),
        "random_70": lambda: random_pauses(0.7),
    }


class StreamSource:
    """Drives the ``s_axis_<member>`` stream ``port`` of ``dut`` from a queue of beats.

    ``send(beats)`` queues dicts of field values (``"last"`` included when the stream has
    tlast). Valid follows ``pause`` (an iterator of bools); once valid is high it stays high,
    with the payload unchanged, until the DUT takes the beat, as AXI4-Stream requires.
    """

    def __init__(self, dut, port, clock, pause=None):
        self.port = port
        self.clock = clock
        self.tvalid = getattr(dut, port["prefix"] + "_tvalid")
        self.tready = getattr(dut, port["prefix"] + "_tready")
        self.tdata = getattr(dut, port["prefix"] + "_tdata")
        self.tlast = getattr(dut, port["prefix"] + "_tlast") if port["has_last"] else None
        self.queue = collections.deque()
        self.pause = pause or itertools.repeat(False)
        self.sent = 0
        self._current = None
        self.tvalid.value = 0
        self._task = cocotb.start_soon(self._run())

    def send(self, beats):
        for beat in beats:
            self.queue.append((pack(self.port, beat), int(beat.get("last", 0))))

    def clear(self):
        """Drop everything not yet taken (used around a reset)."""
        self.queue.clear()
        self._current = None
        self.tvalid.value = 0

    @property
    def idle(self):
        return not self.queue and self._current is None

    async def _run(self):
        while True:
            await RisingEdge(self.clock)
            if self._current is not None and self.tready.value == 1:
                self._current = None
                self.sent += 1
            if self._current is None:
                if self.queue and not next(self.pause):
                    self._current = self.queue.popleft()
                    word, last = self._current
                    self.tdata.value = word
                    if self.tlast is not None:
                        self.tlast.value = last
                    self.tvalid.value = 1
                else:
                    self.tvalid.value = 0


class StreamSink:
    """Takes beats from the ``m_axis_<member>`` stream ``port`` of ``dut``.

    Ready follows ``pause``. Every accepted beat is unpacked into a dict (with ``"last"``)
    and appended to ``beats``. While valid is high and ready low, the payload and valid
    must hold; a change raises :class:`ProtocolError` at the cycle it happens.
    """

    def __init__(self, dut, port, clock, pause=None):
        self.port = port
        self.clock = clock
        self.tvalid = getattr(dut, port["prefix"] + "_tvalid")
        self.tready = getattr(dut, port["prefix"] + "_tready")
        self.tdata = getattr(dut, port["prefix"] + "_tdata")
        self.tlast = getattr(dut, port["prefix"] + "_tlast") if port["has_last"] else None
        self.pause = pause or itertools.repeat(False)
        # A reset may legally drop valid mid-stall: the protocol check pauses while it is high.
        self.rst = getattr(dut, "rst", None)
        self.beats = []
        self.cycle = 0
        self._stalled = None
        self.tready.value = 0
        self._task = cocotb.start_soon(self._run())

    def clear(self):
        self.beats.clear()
        self._stalled = None

    async def _run(self):
        while True:
            await RisingEdge(self.clock)
            self.cycle += 1
            valid = self.tvalid.value == 1
            ready = self.tready.value == 1
            if self.rst is not None and self.rst.value == 1:
                self._stalled = None
                self.tready.value = 0 if next(self.pause) else 1
                continue
            if valid:
                word = self.tdata.value.to_unsigned()
                last = int(self.tlast.value) if self.tlast is not None else 0
            if self._stalled is not None:
                if not valid or (word, last) != self._stalled:
                    raise ProtocolError(f"{self.port['prefix']}: payload or valid changed while "
                                        f"stalled at cycle {self.cycle}")
            self._stalled = None
            if valid and ready:
                beat = unpack(self.port, word)
                beat["last"] = last
                self.beats.append(beat)
            elif valid:
                self._stalled = (word, last)
            self.tready.value = 0 if next(self.pause) else 1

    async def wait_for(self, count, timeout_cycles):
        """Wait until ``count`` beats arrived; fail (never hang) after ``timeout_cycles``."""
        for _ in range(timeout_cycles):
            if len(self.beats) >= count:
                return
            await RisingEdge(self.clock)
        raise AssertionError(f"{self.port['prefix']}: {len(self.beats)} of {count} beats after "
                             f"{timeout_cycles} cycles")

    async def wait_for_packets(self, count, timeout_cycles):
        """Wait until ``count`` beats with ``last`` arrived (streams whose beats carry a variable
        number of elements, so the beat count is not known ahead); fail after ``timeout_cycles``."""
        for _ in range(timeout_cycles):
            if sum(b["last"] for b in self.beats) >= count:
                return
            await RisingEdge(self.clock)
        raise AssertionError(f"{self.port['prefix']}: {sum(b['last'] for b in self.beats)} of {count} "
                             f"packets after {timeout_cycles} cycles")

    async def wait_for_expected(self, expect, timeout_cycles):
        """``expect``: a beat count, or ``{"packets": n}`` for :meth:`wait_for_packets`."""
        if isinstance(expect, dict):
            await self.wait_for_packets(expect["packets"], timeout_cycles)
        else:
            await self.wait_for(expect, timeout_cycles)


class TB:
    """Clock, reset and the ports description of the emitted top under test."""

    def __init__(self, dut, period_ns=10):
        self.dut = dut
        self.ports = load_ports()
        self.streams = {s["member"]: s for s in self.ports["streams"]}
        self.clock = dut.clk
        cocotb.start_soon(Clock(dut.clk, period_ns, unit="ns").start())

    async def reset(self, cycles=4):
        self.dut.rst.value = 1
        await ClockCycles(self.clock, cycles)
        self.dut.rst.value = 0
        await RisingEdge(self.clock)

    def source(self, member, pause=None):
        return StreamSource(self.dut, self.streams[member], self.clock, pause)

    def sink(self, member, pause=None):
        return StreamSink(self.dut, self.streams[member], self.clock, pause)
