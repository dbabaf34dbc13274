"""pwru.filter without root: libpcap compilation, errors, the classic listing, translator output."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pwru.ebpf import asm
from pwru.ebpf.asm import Class, JmpOp
from pwru.filter import FilterError, compile_filter
from pwru.filter.cbpf import CInsn, CProgram
from pwru.filter.pcap import (
    DLT_EN10MB,
    DLT_RAW,
    FilterMemoryExhausted,
    PcapProgram,
    compile_cbpf,
    compile_cbpf_bounded,
    compile_memory_limit,
    shown_expr,
)
from pwru.filter.translate import TranslationError, reject_all, translate


def test_empty_expression_adds_no_code() -> None:
    assert compile_filter("") is None
    assert compile_filter("   \t") is None


def test_libpcap_error_reaches_the_user() -> None:
    with pytest.raises(FilterError) as info:
        compile_filter("tcp port")
    assert str(info.value) == 'invalid pcap filter "tcp port": can\'t parse filter expression: syntax error'
    with pytest.raises(FilterError, match="netmask not known"):
        compile_filter("ip broadcast")


def test_protochain_loop_is_refused_clearly() -> None:
    with pytest.raises(FilterError, match=r"loop \(protochain\)"):
        compile_filter("ip6 protochain 6")


def test_link_types() -> None:
    f = compile_filter("arp")
    assert f is not None and f.l2 is not None and f.l3 is None
    assert f.l3_error == "expression rejects all packets"
    assert f.to_ebpf("l3", "probe") == reject_all()
    assert [str(i) for i in reject_all()] == ["r0 = 0", "exit"]
    f = compile_filter("ip[9] = 6")
    assert f is not None and f.l2 is not None and f.l3 is not None
    # raw IP: the protocol byte is at offset 9, on Ethernet at 14 + 9
    assert "[9]" in f.l3.dump() and "[23]" in f.l2.dump()
    assert "; l2 (Ethernet)" in f.dump()


def test_listing_matches_libpcap_bpf_image() -> None:
    for expr in ["tcp port 80", "ip[2:2] - ((ip[0]&0xf)<<2) != 0", "len > 100 and ip[8] % 3 = 1", "vlan 10"]:
        prog = compile_cbpf(expr, DLT_EN10MB)
        ours = [line.rstrip() for line in prog.dump().splitlines()]
        theirs = [line.rstrip() for line in PcapProgram(prog).image().splitlines()]
        assert ours == theirs


def test_offline_filter_reference() -> None:
    prog = compile_cbpf("ip[9] = 17", DLT_RAW)
    udp = bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17]) + bytes(18)
    assert PcapProgram(prog).run(udp) == 262144
    assert PcapProgram(prog).run(udp[:5]) == 0  # out of bounds rejects


def test_translation_of_a_small_program() -> None:
    # ldh [12]; jeq #0x800 jt 0 jf 1; ret #1; ret #0
    prog = CProgram((CInsn(0x28, 0, 0, 12), CInsn(0x15, 0, 1, 0x800), CInsn(0x06, 0, 0, 1), CInsn(0x06)))
    text = [str(i) for i in translate(prog, "direct")]
    assert text == [
        "r6 = r1",
        "r7 = r2",
        "w8 = 0",
        "w9 = 0",
        "r1 = r6",
        "r1 += 14",
        "if r1 > r7 goto +7",  # the shared reject block at the end
        "r8 = *(u16 *)(r6 + 12)",
        "r8 = be16 r8",
        "if w8 != 2048 goto +2",
        "w0 = 1",
        "exit",
        "w0 = 0",
        "exit",
        "w0 = 0",
        "exit",
    ]
    probe = translate(prog, "probe")
    calls = [i for i in probe if i.is_helper_call]
    assert [i.imm for i in calls] == [113]
    assert probe[-1].is_exit


def test_translation_invariants_on_real_programs() -> None:
    f = compile_filter("(ip[2:2] - ((ip[0]&0xf)<<2) - ((tcp[12]&0xf0)>>2)) != 0 and ip[8] / ip[1] > 0")
    assert f is not None
    for link in ("l2", "l3"):
        for mode in ("direct", "probe"):
            body = f.to_ebpf(link, mode)  # type: ignore[arg-type]
            assert body[-1].is_exit
            assert all(i.label is None and i.target is None for i in body)
            for i in body:
                if i.cls == Class.STX or i.cls == Class.ST:
                    assert i.dst == 10 and -128 <= i.off < 0  # own stack, at most 128 bytes
                if i.is_jump:
                    assert i.jmp_op != JmpOp.JA or i.off != 0
                assert not i.is_pseudo_call
            calls = {i.imm for i in body if i.is_call}
            assert calls == ({113} if mode == "probe" else set())
            # division by X checks for zero first
            data = asm.assemble(body)
            assert asm.decode(data) == body


def test_translator_refuses_what_it_cannot_express() -> None:
    with pytest.raises(TranslationError, match="leaves the program"):
        translate(CProgram((CInsn(0x05, 0, 0, 5), CInsn(0x06))))
    with pytest.raises(TranslationError, match="unsupported"):
        translate(CProgram((CInsn(0x07 | 0x10), CInsn(0x06))))
    with pytest.raises(ValueError, match="unknown emission mode"):
        translate(CProgram((CInsn(0x06),)), "jit")  # type: ignore[arg-type]


def test_classic_opcodes_have_their_own_enums() -> None:
    from pwru.filter import cbpf

    jeq = CInsn(0x15, 0, 1, 0x800)  # jmp | jeq | k
    sub = CInsn(0x14, 0, 0, 3)  # alu | sub | k
    assert jeq.jmp_op is cbpf.JmpOp.JEQ and jeq.alu_op is None
    assert sub.alu_op is cbpf.AluOp.SUB and sub.jmp_op is None
    assert jeq.jmp_op.name == "JEQ" and sub.alu_op.name == "SUB"  # the same 0x10, each its own name
    assert str(jeq) == "jeq #0x800 jt +0 jf +1"
    assert str(sub) == "sub #3"
    assert str(CInsn(0x05, 0, 0, 2)) == "ja +2"
    assert jeq.format(4) == "(004) jeq      #0x800           jt 5\tjf 6"
    assert CInsn(0x87).misc_op is cbpf.MiscOp.TXA and str(CInsn(0x87)) == "txa"
    assert CInsn(0x16).rval is cbpf.RetSrc.A and str(CInsn(0x16)) == "ret"
    assert {type(m) for m in (cbpf.JmpOp.JA, cbpf.AluOp.ADD, cbpf.Class.LD, cbpf.Size.W, cbpf.Mode.IMM)} == {
        cbpf.JmpOp, cbpf.AluOp, cbpf.Class, cbpf.Size, cbpf.Mode,
    }  # fmt: skip
    assert str(CInsn(0x07 | 0x10)) == "unimp 0x17"  # an opcode classic BPF does not have


def test_backward_jump_is_found_once_and_refused_by_both_entry_points() -> None:
    loop = CProgram((CInsn(0x06, 0, 0, 1), CInsn(0x05, 0, 0, 0xFFFFFFFE), CInsn(0x06)))
    assert loop.first_backward_jump() == 1
    assert CProgram((CInsn(0x05, 0, 0, 0), CInsn(0x06))).first_backward_jump() is None
    with pytest.raises(TranslationError, match=r"loop \(protochain\)"):
        translate(loop)


# --- far jumps ------------------------------------------------------------------------------------


def far_program(loads: int) -> CProgram:
    """``ldb [0]`` then ``loads`` more loads, each bounds-checked by a jump to the one reject block at the end
    of the body: the first check's jump spans the whole body. Accepts with A (the last byte loaded)."""
    body = [CInsn(0x30, 0, 0, i % 60) for i in range(loads)]  # ldb [i % 60]
    return CProgram((CInsn(0x30, 0, 0, 59), *body, CInsn(0x16)))


def test_a_far_jump_needs_gotol_or_is_too_large() -> None:
    from pwru.filter.translate import FilterTooLarge

    prog = far_program(3500)  # about 11 eBPF instructions a probe-mode load: beyond 32767
    with pytest.raises(FilterTooLarge, match=r"a jump spans \d+ instructions, beyond the 32767"):
        translate(prog, "probe")
    asked: list[bool] = []

    def kernel_has_gotol() -> bool:
        asked.append(True)
        return True

    body = translate(prog, "probe", long_jumps=kernel_has_gotol)
    assert asked == [True]
    longs = [i for i in body if i.is_long_jump]
    assert longs and all(-(1 << 15) <= i.off < (1 << 15) for i in body)
    # a far conditional jump became a short one over a gotol: "if !cond goto +1; gotol"
    first = next(n for n, i in enumerate(body) if i.is_long_jump)
    assert body[first - 1].is_jump and body[first - 1].off == 1
    # and small programs never ask
    translate(far_program(10), "probe", long_jumps=lambda: pytest.fail("asked"))  # type: ignore[arg-type,return-value]


def test_far_jumps_keep_the_verdicts() -> None:
    from tests.ebpf_vm import Program, run_on_packet

    prog = far_program(3500)
    ref = PcapProgram(prog)
    for mode in ("direct", "probe"):
        vm = Program(translate(prog, mode, long_jumps=True))  # type: ignore[arg-type]
        for pkt in (bytes(range(60)), bytes(59), b"", bytes(range(100))):
            assert run_on_packet(vm, pkt) == ref.run(pkt)


def test_widening_jset_uses_a_trampoline() -> None:
    from pwru.ebpf.asm import Reg
    from pwru.filter.translate import FilterTooLarge, _widen
    from tests.ebpf_vm import Program, run_on_packet

    filler = [asm.mov_imm(Reg.R0, 7)] * 40000
    # if r1 & 1 goto far; r0 = 1; exit; <filler>; far: exit  (r1 = the packet address, even, then odd)
    body = [asm.jmp_imm(JmpOp.JSET, Reg.R1, 1, 0), asm.mov_imm(Reg.R0, 1), asm.exit_(), *filler, asm.exit_()]
    targets = [len(body) - 1] + [-1] * (len(body) - 1)
    out = _widen(body, targets, True)
    assert [str(i) for i in out[:3]] == ["if r1 & 0x1 goto +1", "goto +1", f"gotol +{40002}"]
    assert run_on_packet(Program(out), b"") == 1  # PACKET_BASE is even: not taken
    odd = Program([asm.alu_imm(asm.AluOp.ADD, Reg.R1, 1), *out])
    assert run_on_packet(odd, b"") == 0  # taken: through the trampoline to the far exit (r0 still 0)
    with pytest.raises(FilterTooLarge):
        _widen(body, targets, False)


def test_a_big_filter_says_it_is_compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    import pwru.filter
    from pwru.filter import BIG_FILTER_TERMS, terms

    said: list[str] = []
    compile_filter("host 10.0.0.1 or host 10.0.0.2", progress=said.append)
    assert said == []
    assert terms("host 10.0.0.1 or host 10.0.0.2 and not port 80 || udp && tcp") == 5
    assert terms("host android or host orchid.example") == 2  # words containing "and"/"or" are no connective

    # libpcap itself would take minutes (its optimizer is cubic in the terms): the line comes before it.
    def refuse(expr: str, dlt: int, limit: int) -> None:
        said.append(f"libpcap called, bounded to {limit >> 20} MiB")
        raise FilterError(expr, "stop here")

    monkeypatch.setattr(pwru.filter, "compile_cbpf_bounded", refuse)
    monkeypatch.setattr(pwru.filter, "compile_memory_limit", lambda: 3 << 30)
    big = " or ".join(f"port {i}" for i in range(BIG_FILTER_TERMS))
    with pytest.raises(FilterError):
        compile_filter(big, progress=said.append)
    assert said[:2] == [
        f"Compiling the pcap filter ({BIG_FILTER_TERMS:,} terms, at most 3,072 MiB)...",
        "libpcap called, bounded to 3072 MiB",
    ]


_HOSTS_200 = " or ".join(f"host 10.{i // 250}.{i % 250}.1" for i in range(200))


def test_a_bounded_compilation_gives_libpcaps_program_and_its_errors() -> None:
    """The forked child's program is libpcap's own, instruction for instruction; its refusal is libpcap's."""
    for expr, dlt in ((_HOSTS_200, DLT_EN10MB), ("udp port 53 or icmp6", DLT_RAW), ("vlan and tcp", DLT_EN10MB)):
        assert compile_cbpf_bounded(expr, dlt, 256 << 20) == compile_cbpf(expr, dlt)
    with pytest.raises(FilterError) as info:
        compile_cbpf_bounded("tcp port", DLT_EN10MB, 256 << 20)
    assert type(info.value) is FilterError and "syntax error" in info.value.message


def test_a_filter_too_large_for_its_memory_bound_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """~12,000 terms made libpcap's optimizer ask for 15 GB here, and the OOM killer ended pwru (and more): a
    big filter compiles in a child with a bounded address space, and running out is one clear line. Here
    200 terms (about 5 MiB) against a 1 MiB bound stand for it."""
    # The bound is on growth: a long-lived process (this one) has free heap libpcap's mallocs may take without
    # growing, so the small-bound case runs in a fresh process.
    code = (
        "from pwru.filter.pcap import DLT_EN10MB, FilterMemoryExhausted, compile_cbpf_bounded\n"
        "try:\n"
        f"    compile_cbpf_bounded({_HOSTS_200!r}, DLT_EN10MB, 1 << 20)\n"
        "except FilterMemoryExhausted as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "too large to compile: libpcap needed more than 1 MiB" in out.stdout, out

    import pwru.filter

    monkeypatch.setattr(pwru.filter, "BIG_FILTER_TERMS", 100)
    monkeypatch.setattr(pwru.filter, "compile_memory_limit", lambda: 1 << 20)
    calls: list[int] = []

    def counted(expr: str, dlt: int, limit: int) -> CProgram:
        calls.append(dlt)
        raise FilterMemoryExhausted(expr, f"too large to compile: libpcap needed more than {limit >> 20} MiB")

    monkeypatch.setattr(pwru.filter, "compile_cbpf_bounded", counted)
    with pytest.raises(FilterMemoryExhausted) as info:
        compile_filter(_HOSTS_200)
    assert calls == [DLT_EN10MB]  # the raw-IP form is not tried only to fail as slowly again
    line = str(info.value)
    assert "\n" not in line and len(line) < 300, line
    assert line.startswith('invalid pcap filter "host 10.0.0.1 or host 10.0.1.1 or ') and 'characters)"' in line
    assert compile_memory_limit() >= 256 << 20


def test_a_long_expression_is_shortened_in_messages() -> None:
    assert shown_expr("tcp port 80") == "tcp port 80"
    long = " or ".join(f"port {i}" for i in range(1000))
    short = shown_expr(long)
    assert len(short) <= 130 and short.startswith("port 0 or port 1") and short.endswith(f"({len(long):,} characters)")
    assert str(FilterError(long, "x")) == f'invalid pcap filter "{short}": x'


def test_libpcap_reads_uninitialized_scratch_memory_and_the_translation_zero() -> None:
    """A fuzzer finding (tests/data/filter/regressions.txt): on a non-IP frame this program reads M[0], which
    only the Geneve branch writes; libpcap's interpreter then loads at a garbage offset and rejects, the
    translation reads 0 and accepts, which is the expression's meaning (the frame is neither Geneve nor in
    10.0/16, so "not (...)" holds)."""
    from tests.ebpf_vm import Program, run_on_packet
    from tests.filter_reference import uninitialized_scratch_read

    f = compile_filter("not ((geneve 0) or (net 10.0.0.0 mask 255.255.0.0))")
    assert f is not None and f.l2 is not None
    assert uninitialized_scratch_read(f.l2) is not None
    assert uninitialized_scratch_read(compile_cbpf("geneve 0", DLT_EN10MB)) is None
    frame = bytes.fromhex("66778899aabb66778899aabb123452")
    for mode in ("direct", "probe"):
        assert run_on_packet(Program(f.to_ebpf("l2", mode)), frame) == 262144  # type: ignore[arg-type]


@pytest.mark.parametrize("has_gotol", [True, False])
def test_build_object_uses_gotol_or_says_the_filter_is_too_large(
    monkeypatch: pytest.MonkeyPatch, has_gotol: bool
) -> None:
    import pwru.filter
    from pwru.config import Config, FilterConfig
    from pwru.ebpf import features
    from pwru.errors import UserError
    from pwru.filter import CompiledFilter
    from pwru.run import build_object

    big = CompiledFilter("a huge filter", far_program(3500), far_program(10))
    monkeypatch.setattr(pwru.filter, "compile_filter", lambda expr, progress=None: big if expr else None)
    monkeypatch.setattr(features, "long_jump", lambda: features.Feature("long_jump", has_gotol, "test"))
    config = Config(filter=FilterConfig(pcap="a huge filter"))
    if has_gotol:
        spec, consts = build_object(config)
        assert consts["cfg_has_pcap"] == 1
        body = spec.functions["filter_pcap_l2"].insns
        assert any(i.is_long_jump for i in body)
        return
    with pytest.raises(UserError) as info:
        build_object(config)
    assert str(info.value).startswith("the filter is too large for this kernel (a jump spans ")
    assert info.value.exit_code == 2 and "\n" not in str(info.value)
