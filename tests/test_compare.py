"""``hiera benchmark --compare`` (hiera.bench.plan, .runner, .report and the worker, hiera.bench.worker).

Tiny random models only. The pure parts (plan, schedule, ratios, report) run on made-up
measurements; the worker protocol and one end-to-end run use real worker processes; crashing and
hanging workers are shell scripts standing in for a python. The comparison with the official
package runs only where its environment already exists (nothing is built or installed here).
"""

import argparse
import json
import os
import statistics

import pytest

import hiera
from hiera.bench import plan, report, runner
from hiera.bench.plan import CompareError, Settings, Variant
from hiera.bench.runner import Launcher, Worker, WorkerError
from hiera.cli import benchmark as bench_cli

TINY = {"embed_dim": 8, "num_heads": 1, "stages": [1, 1, 1, 1], "input_size": [64, 64], "num_classes": 10,
        "decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 1}
PNG = b"\x89PNG\r\n\x1a\n"


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="hiera")
    bench_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def fake_python(tmp_path, name, body):
    """A shell script that stands in for a python interpreter (its arguments are ignored)."""
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


class FakeWorker:
    """Answers like a worker; every request is appended to ``log`` as (label, op)."""

    def __init__(self, case, log, step_ms=10.0, fail_at=None):
        self.case, self.log, self.step_ms, self.fail_at = case, log, step_ms, fail_at
        self.runs = 0

    def request(self, msg, timeout):
        self.log.append((self.case.label, msg["op"]))
        if msg["op"] == "hello":
            return {"ok": True, "version": "0", "file": "x", "idle_rss_mb": 100.0}
        if msg["op"] == "build":
            return {"ok": True, "params_m": 1.0, "first_step_s": 0.1}
        self.runs += 1
        if self.runs == self.fail_at:
            raise WorkerError("the worker exited (code 3) during 'run'", "boom")
        n = msg.get("iters") or 2
        return {"ok": True, "latencies_ms": [self.step_ms * self.runs] * n, "total_s": n * self.step_ms * self.runs / 1e3,
                "peak_mb": 150.0 + self.runs, "memory_kind": "cpu_rss_peak"}

    def kill(self):
        self.log.append((self.case.label, "kill"))

    def close(self):
        self.log.append((self.case.label, "close"))


def result(impl, batch, thr, dtype="fp32", compile=None, section="inference", task="classify", peak=200.0,
           idle=100.0):
    """A made-up measured result, as summarize() returns it."""
    v = Variant(impl, dtype, compile)
    mode = "train" if section == "train" else "inference"
    return {"section": section, "group": f"{section} {batch}", "label": v.label, "impl": impl, "dtype": dtype,
            "compile": compile, "task": task, "mode": mode, "model": "hiera_small_224", "overrides": {},
            "input_size": [224, 224], "batch": batch, "unit": "img/s", "throughput": thr,
            "throughput_rounds": [thr], "spread": 0.0, "rounds": 1, "iters": 1, "latency_ms_median": 1e3 * batch / thr,
            "latency_ms_p90": 1e3 * batch / thr, "latency_ms_min": 1e3 * batch / thr, "peak_rss_mb": peak,
            "idle_rss_mb": idle, "peak_above_idle_mb": peak - idle, "memory_kind": "cpu_rss_peak"}


# ----------------------------------------------------------------------------------------- plan
def test_parse_variants():
    assert plan.parse_variant("official:bf16:compile") == Variant("official", "bf16", "inductor")
    assert plan.parse_variant("ours") == Variant("ours", "fp32", None)
    assert plan.parse_variant("ours:fp32:compile=eager") == Variant("ours", "fp32", "eager")
    assert plan.parse_variant("hf:bf16").label == "HF transformers bf16"
    assert plan.parse_variants(["ours:fp32", "ours:fp32", "timm:fp32"]) == [Variant("ours"), Variant("timm")]
    graphs = plan.parse_variant("ours:bf16:graphs")
    assert graphs == Variant("ours", "bf16", "inductor", graphs=True) != Variant("ours", "bf16", "inductor")
    assert graphs.label == "ours bf16 + compile + CUDA graphs"
    case = plan.plan(["inference"], "hiera_tiny_224", [graphs, Variant("ours", "bf16", "inductor")], batches=[1])
    assert [c.spec(Settings())["compile_mode"] for c in case] == ["reduce-overhead", None]
    assert plan.parse_variant("vit_s16:bf16:compile") == Variant("vit_s16", "bf16", "inductor")
    for bad in ("mine:fp32", "ours:int8", "ours:fp32:jit", "a:b:c:d", "", "ours:fp32:graphs=eager"):
        with pytest.raises(CompareError, match="bad variant"):
            plan.parse_variant(bad)
    assert plan.cross_variants(["ours", "official"], ["fp32"], "inductor") == [
        Variant("ours"), Variant("official"), Variant("ours", "fp32", "inductor"), Variant("official", "fp32", "inductor")]


def test_schedule_rotates_the_order():
    rounds = runner.schedule(3, 4)
    assert rounds == [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]
    for position in range(3):  # over a full cycle every case takes every position once
        assert sorted(r[position] for r in rounds[:3]) == [0, 1, 2]
    assert runner.schedule(0, 3) == [] and runner.schedule(2, 1) == [[0, 1]]


def test_plan_groups_and_skips():
    variants = plan.parse_variants(["ours:fp32", "official:fp32", "timm:fp32", "hf:bf16"])
    cases = plan.plan(["inference", "train", "scaling"], "hiera_small_224", variants, batches=[1, 8],
                         train_batch=4, overrides={"decoder_depth": 1}, scaling_sizes=[224, 384], scaling_batch=2,
                         scaling_frames=[8], scaling_batches=[1, 2], scaling_variants=[Variant("ours")])
    groups = list(dict.fromkeys(c.group for c in cases))
    assert groups == ["inference batch 1", "inference batch 8", "train classify", "train mae", "scaling size",
                      "scaling video", "scaling batch"]
    mae = [c for c in cases if c.task == "mae"]
    assert {c.model for c in mae} == {"mae_hiera_small_224"} and all(c.batch == 4 for c in mae)
    assert [c.skip for c in mae if c.impl == "timm"] == ["timm has no Hiera MAE"]
    assert all(c.arch["decoder_depth"] == 1 for c in mae)  # decoder arguments reach MAE models only
    assert not any("decoder_depth" in c.arch for c in cases if c.task == "classify")
    classify = [c for c in cases if c.group == "inference batch 8"]
    assert [c.impl for c in classify] == ["ours", "official", "timm", "hf"] and classify[0].overrides == {}
    assert classify[0].arch["stages"] == [1, 2, 11, 2] and classify[0].input_size == (224, 224)
    sizes = [c for c in cases if c.group == "scaling size"]
    assert [c.input_size for c in sizes] == [(224, 224), (384, 384)] and all(c.impl == "ours" for c in sizes)
    video = [c for c in cases if c.group == "scaling video"]
    assert video[0].model == "hiera_base_16x224" and video[0].input_size == (8, 224, 224) and video[0].unit == "clips/s"
    with pytest.raises(CompareError, match="no zoo model"):
        plan.plan(["inference"], "hiera_gigantic_224", variants)
    with pytest.raises(CompareError, match="no MAE zoo model"):
        plan.plan(["train"], "hiera_gigantic_224", variants, tasks=["mae"])
    for task in ("classify", "mae"):  # SAM 2's trunk (and its MAE): no official or timm Hiera to time against
        with pytest.raises(CompareError, match=r"is a (MaskedAutoencoder)?HieraDet \(SAM 2's trunk\)"):
            plan.plan(["train"], "sam2_hiera_tiny", variants, tasks=[task])
    with pytest.raises(CompareError, match=">= 1"):
        plan.plan(["inference"], "hiera_small_224", variants, batches=[0])
    with pytest.raises(CompareError, match="unknown section"):
        plan.plan(["serve"], "hiera_small_224", variants)
    with pytest.raises(CompareError, match="takes images"):
        plan.plan(["scaling"], "hiera_small_224", variants, video_model="hiera_base_224")


# ----------------------------------------------------------------------------------------- running
def test_runner_interleaves_and_summarises():
    log = []
    variants = [Variant("ours"), Variant("official"), Variant("timm")]
    cases = plan.plan(["inference"], "hiera_small_224", variants, batches=[4])
    launch = {impl: Launcher("python") for impl in ("ours", "official", "timm")}
    record = runner.run_plan(cases, Settings(rounds=3, iters=2), launch, {}, start=lambda c: FakeWorker(c, log))
    labels = [v.label for v in variants]
    ops = [op for _, op in log]
    # every worker is started and built before anything is timed, then each round runs each case once
    assert ops[:6] == ["hello"] * 3 + ["build"] * 3
    runs = [label for label, op in log if op == "run"]
    assert runs == labels + labels[1:] + labels[:1] + labels[2:] + labels[:2]
    assert [label for label, op in log if op == "close"] == labels
    r = record["results"][0]
    per_round = [4 * 2 / (2 * 0.01 * k) for k in (1, 2, 3)]
    assert r["throughput"] == pytest.approx(statistics.median(per_round))
    assert r["throughput_rounds"] == pytest.approx(per_round)
    assert r["latency_ms_median"] == pytest.approx(20.0) and r["iters"] == 6 and r["rounds"] == 3
    assert r["peak_rss_mb"] == 153.0 and r["peak_above_idle_mb"] == 53.0
    assert record["results"][0]["vs_official"] == pytest.approx(1.0)
    json.dumps(record)


def test_runner_reports_a_failing_worker_and_goes_on():
    log = []
    cases = plan.plan(["inference"], "hiera_small_224", [Variant("ours"), Variant("official")], batches=[1])

    def start(case):
        return FakeWorker(case, log, fail_at=2 if case.impl == "official" else None)

    messages = []
    record = runner.run_plan(cases, Settings(rounds=3, iters=1), {"ours": Launcher("p"), "official": Launcher("p")},
                              {}, log=messages.append, start=start)
    ours, official = record["results"]
    assert ours["rounds"] == 3 and "error" not in ours
    assert official["partial"] and official["rounds"] == 1 and "exited (code 3)" in official["error"]
    assert official["stderr_tail"] == "boom"
    assert any("round 2 failed" in m and "| boom" in m for m in messages)
    assert ("official fp32", "kill") in log


# ----------------------------------------------------------------------------------------- numbers
def test_ratios_and_headline():
    results = [
        result("official", 8, 10.0, peak=300.0, idle=100.0), result("ours", 8, 15.0, peak=250.0, idle=120.0),
        result("timm", 8, 12.0), result("hf", 8, 20.0, dtype="bf16"), result("official", 8, 16.0, dtype="bf16"),
        result("official", 8, 18.0, dtype="bf16", compile="inductor"), result("ours", 8, 24.0, dtype="bf16"),
        result("official", 32, 11.0), result("ours", 32, 14.0),
        result("official", 8, 5.0, section="train", peak=900.0), result("ours", 8, 6.0, section="train", peak=800.0),
        {**result("ours", 1, 1.0), "throughput": None, "error": "boom"},
    ]
    report.add_ratios(results)
    ours8, ours_bf16 = results[1], results[6]
    assert ours8["vs_official"] == pytest.approx(1.5)
    assert ours8["memory_vs_official"] == pytest.approx(250 / 300)
    assert ours8["step_memory_vs_official"] == pytest.approx(130 / 200)
    assert ours8["vs_best_peer"] == pytest.approx(15 / 12) and ours8["best_peer"] == "timm fp32"
    assert ours_bf16["vs_official"] == pytest.approx(1.5)  # eager against eager
    assert ours_bf16["vs_best_peer"] == pytest.approx(1.2) and ours_bf16["best_peer"] == "HF transformers bf16"
    assert results[2]["vs_official"] == pytest.approx(1.2) and "vs_best_peer" not in results[2]
    assert "vs_official" not in results[0] and "vs_official" not in results[5]  # no compiled ours to compare
    assert results[10]["vs_official"] == pytest.approx(1.2)
    rows = {h["what"]: h["ratio"] for h in report.headline(results)}
    assert rows["inference fp32, batch 32: throughput ours / official"] == pytest.approx(14 / 11)
    assert rows["train classify fp32, batch 8: peak RSS ours / official"] == pytest.approx(800 / 900)
    assert rows["inference ours fp32: batch 32 / batch 8 throughput"] == pytest.approx(14 / 15)
    assert rows["inference official fp32: batch 32 / batch 8 throughput"] == pytest.approx(1.1)


def test_vit_references():
    """timm's ViT-B/16 and ViT-S/16 are measured beside Hiera: images only, no MAE; each Hiera row
    gets its ratio to them; they get no ratio to the official package and are never a peer."""
    variants = plan.parse_variants(["ours:bf16", "vit_b16:bf16", "vit_s16:bf16"])
    assert variants[1].label == "timm ViT-B/16 bf16"
    cases = plan.plan(["inference", "train"], "hiera_small_224", variants, batches=[8], train_batch=4)
    skips = {(c.impl, c.task): c.skip for c in cases if c.impl != "ours"}
    assert skips[("vit_b16", "classify")] is None and "no MAE" in skips[("vit_b16", "mae")]
    video = plan.plan(["inference"], "hiera_base_16x224", variants, batches=[1])
    assert [c.skip is not None for c in video] == [False, True, True]
    results = [result("ours", 8, 12.0, dtype="bf16"), result("vit_b16", 8, 8.0, dtype="bf16"),
               result("vit_s16", 8, 16.0, dtype="bf16"), result("official", 8, 4.0, dtype="bf16"),
               result("timm", 8, 6.0, dtype="bf16")]
    report.add_ratios(results)
    ours, vit_b = results[0], results[1]
    assert ours["vs_vit_b16"] == pytest.approx(1.5) and ours["vs_vit_s16"] == pytest.approx(0.75)
    assert ours["vs_official"] == pytest.approx(3.0) and ours["best_peer"] == "timm bf16"  # not a ViT
    assert "vs_official" not in vit_b and "vs_vit_b16" not in vit_b
    rows = {h["what"]: h["ratio"] for h in report.headline(results)}
    assert rows["inference bf16, batch 8: throughput ours / timm ViT-B/16"] == pytest.approx(1.5)
    # a ViT row is credited with the ViT's FLOPs (ViT-B/16 at 224: 17.6 G multiply-adds), not Hiera's
    plan.add_flops(results, {"measured_peak_tflops": {"bf16": 2.0}}, Settings())
    assert vit_b["gflop_per_item"] == pytest.approx(35.1, abs=0.3)
    assert results[2]["gflop_per_item"] == pytest.approx(9.2, abs=0.2)
    assert ours["gflop_per_item"] == pytest.approx(12.81, abs=0.01)
    assert vit_b["mfu"] == pytest.approx(vit_b["tflops"] / 2.0) and vit_b["peak_source"] == "measured"
    train = plan.reference_flops("vit_b16", "train", (224, 224))
    assert 2.9 < train / plan.reference_flops("vit_b16", "inference", (224, 224)) < 3.1


def test_measured_peak_is_the_mfu_ceiling():
    peaks = plan.measure_peak("cpu", ["fp32", "fp32"], threads=1)
    assert list(peaks) == ["fp32"] and 0.001 < peaks["fp32"] < 100
    system = {"measured_peak_tflops": peaks, "gpu": {"name": "NVIDIA H100 80GB HBM3"}}
    assert plan.peak_tflops(system, "fp32") == peaks["fp32"]  # measured beats the data sheet
    assert plan.peak_tflops(system, "bf16") == pytest.approx(989.4)  # not measured: the data sheet
    assert plan.peak_tflops(system, "fp32", given=3.0) == 3.0
    record = report.make_record([result("ours", 8, 20.0)], Settings(), {}, {}, 1.0)
    record["system"]["measured_peak_tflops"] = {"fp32": 0.25}
    plan.add_flops(record["results"], record["system"], Settings())
    assert record["results"][0]["mfu"] == pytest.approx(record["results"][0]["tflops"] / 0.25)
    assert "the ceiling measured in this run: fp32 0.25 TFLOP/s" in report.markdown(record)


def test_model_flops_counts_the_architecture():
    """Counted on the meta device; the MAE (whose kept-unit index has no meta kernel) on CPU. The
    counts are those of the stock operators: our CPU fast paths step aside under a dispatch mode."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    import hiera

    _, arch, size = plan.resolve_model("hiera_tiny_224", "classify")
    infer = plan.model_flops("classify", "inference", arch, size)
    train = plan.model_flops("classify", "train", arch, size)
    # Hiera-T: 4.9 GFLOPs (multiply-adds) in the paper's table, so about 9.8 GFLOP here.
    assert 9.0e9 < infer < 10.5e9 and 2.9 < train / infer < 3.1
    model = hiera.hiera_tiny_224().train()
    with FlopCounterMode(display=False) as counter:  # float32 CPU training: the oneDNN path otherwise
        F.cross_entropy(model(torch.randn(1, 3, 224, 224)), torch.zeros(1, dtype=torch.long)).backward()
    assert counter.get_total_flops() == train
    _, mae_arch, _ = plan.resolve_model("hiera_tiny_224", "mae")
    mae = plan.model_flops("mae", "train", mae_arch, size, mask_ratio=0.6)
    assert mae is not None and 0.3 * train < mae < 2 * train
    # counted on CPU (no meta kernel for the MAE), attention included: a step is about 3 forwards
    assert plan.model_flops("mae", "inference", mae_arch, size) == pytest.approx(mae / 3, rel=0.01)
    assert plan.model_flops("mae", "train", mae_arch, size, mask_ratio=0.9) < mae  # fewer visible tokens


def test_flops_and_model_flop_utilisation():
    h100 = {"gpu": {"name": "NVIDIA H100 80GB HBM3"}}
    assert plan.peak_tflops(h100, "bf16") == pytest.approx(989.4)
    assert plan.peak_tflops({"cpu": "x"}, "bf16") is None and plan.peak_tflops({}, "bf16", 2.0) == 2.0
    results = [result("ours", 256, 7400.0, dtype="bf16"), {**result("ours", 1, 1.0), "throughput": None}]
    plan.add_flops(results, h100, Settings())
    r = results[0]
    assert r["gflop_per_item"] == pytest.approx(12.81, abs=0.01)  # Hiera-S at 224
    assert r["tflops"] == pytest.approx(r["gflop_per_item"] * 7400 / 1e3)
    assert r["mfu"] == pytest.approx(r["tflops"] / 989.4)
    assert "tflops" not in results[1]
    plan.add_flops(results, {"cpu": "x"}, Settings())
    assert "mfu" in results[0]  # kept from before; a CPU alone has no peak
    cpu = [result("ours", 8, 20.0)]
    plan.add_flops(cpu, {"cpu": "x"}, Settings())
    assert "tflops" in cpu[0] and "mfu" not in cpu[0]
    plan.add_flops(cpu, {"cpu": "x"}, Settings(peak_tflops=0.5))
    record = report.make_record(cpu, Settings(), {}, {}, 1.0)
    text = report.markdown(record)
    assert "| TFLOP/s | MFU |" in text and f"| {100 * cpu[0]['mfu']:.1f}% |" in text
    with pytest.raises(CompareError, match="peak TFLOP/s"):
        Settings(peak_tflops=0).check()


def test_report_json_and_png(tmp_path):
    results = [result("official", 1, 10.0), result("ours", 1, 12.5), result("official", 8, 20.0),
               result("ours", 8, 30.0), result("ours", 8, 12.0, dtype="bf16", compile="inductor"),
               result("official", 8, 5.0, section="train"), result("ours", 8, 6.0, section="train", task="mae"),
               {**result("ours", 8, 1.0), "section": "scaling", "group": "scaling batch"},
               {**result("ours", 8, 2.0), "section": "scaling", "group": "scaling size", "input_size": [384, 384]},
               {**result("timm", 8, 1.0), "throughput": None, "error": "RuntimeError: out of memory"}]
    report.add_ratios(results)
    record = report.make_record(results, Settings(rounds=3), {"ours": {"version": "0.2.0"}},
                                 {"official": "no official environment found: build it"}, 12.0)
    assert record["tool"] == "hiera benchmark --compare" and record["settings"]["rounds"] == 3
    assert record["implementations"]["official"]["skipped"].startswith("no official environment")
    assert record["system"]["cpu_count"] >= 1 and record["headline"]
    json.loads(json.dumps(record))
    text = report.markdown(record)
    assert "| implementation | batch 1 | batch 8 |" in text
    assert "| ours fp32 | 12.5 (1.25x) | 30.0 (1.50x) |" in text and "| official fp32 | 10.0 | 20.0 |" in text
    assert "### Training steps" in text and "### Scaling: batch" in text and "### Scaling: input size" in text
    assert "timm fp32 (inference 8): failed: RuntimeError: out of memory" in text
    assert "official skipped: no official environment found" in text
    path = report.plot(record, tmp_path / "charts" / "compare.png")
    assert path.read_bytes()[:8] == PNG


# ----------------------------------------------------------------------------------------- processes
def test_worker_protocol():
    """A real worker for ours: build tiny cases, time them, survive bad requests."""
    launch, _ = runner.launchers()
    worker = Worker("ours", launch["ours"])
    try:
        hello = worker.request({"op": "hello"}, 120)
        assert hello["impl"] == "ours" and hello["file"] == os.path.abspath(hiera.__file__)
        settings = Settings(warmup=1)
        case = plan.plan(["inference"], "hiera_tiny_224", [Variant("ours", "bf16")], batches=[2], overrides=TINY)[0]
        assert case.overrides and case.arch["embed_dim"] == 8
        built = worker.request({"op": "build", "case": case.spec(settings)}, 120)
        assert built["params_m"] < 0.2 and built["warmup"] == 1 and built["first_step_s"] > 0
        ran = worker.request({"op": "run", "iters": 2}, 120)
        assert len(ran["latencies_ms"]) == 2 and ran["total_s"] > 0 and ran["peak_mb"] > 10
        mae = plan.plan(["train"], "hiera_tiny_224", [Variant("ours")], train_batch=2, tasks=["mae"],
                           overrides=TINY)[0]
        for optimizer in plan.OPTIMIZERS:
            worker.request({"op": "build", "case": mae.spec(Settings(warmup=0, optimizer=optimizer))}, 120)
            ran = worker.request({"op": "run", "min_time": 0.01, "min_iters": 2}, 120)
            assert len(ran["latencies_ms"]) >= 2
        with pytest.raises(WorkerError, match="optimizer must be adamw, adamw-fused or sgd"):
            worker.request({"op": "build", "case": {**mae.spec(Settings()), "optimizer": "lion"}}, 60)
        with pytest.raises(WorkerError, match="unknown op"):
            worker.request({"op": "dance"}, 60)
        with pytest.raises(WorkerError, match="dtype must be one of"):
            worker.request({"op": "build", "case": {**case.spec(settings), "dtype": "int4"}}, 60)
        with pytest.raises(WorkerError, match="no case built"):
            worker.request({"op": "run", "iters": 1}, 60)
    finally:
        worker.close()
    assert worker.proc.returncode == 0


def test_crashing_and_hanging_workers(tmp_path):
    crash = fake_python(tmp_path, "crash", 'echo "Fatal Python error: boom" >&2; exit 3')
    hang = fake_python(tmp_path, "hang", "exec sleep 30")
    worker = Worker("official", Launcher(crash, isolated=True))
    with pytest.raises(WorkerError, match=r"exited \(code 3\)") as e:
        worker.request({"op": "hello"}, 30)
    assert "Fatal Python error: boom" in e.value.tail
    worker = Worker("official", Launcher(hang, isolated=True))
    with pytest.raises(WorkerError, match="no answer to 'hello' within 1 s"):
        worker.request({"op": "hello"}, 1)
    assert worker.proc.poll() is not None  # killed
    with pytest.raises(WorkerError, match="could not start"):
        Worker("ours", Launcher(str(tmp_path / "no_such_python")))

    # In a run: the crash is reported with its stderr and the other implementation is measured.
    log, messages = [], []
    cases = plan.plan(["inference"], "hiera_small_224", [Variant("ours"), Variant("official")], batches=[1])
    launch = {"ours": Launcher("unused"), "official": Launcher(crash, isolated=True)}

    def start(case):
        return FakeWorker(case, log) if case.impl == "ours" else Worker(case.impl, launch[case.impl])

    record = runner.run_plan(cases, Settings(rounds=2, iters=1, timeout=30), launch, {}, messages.append, start)
    ours, official = record["results"]
    assert ours["rounds"] == 2 and official["error"].startswith("the worker exited (code 3)")
    assert "boom" in official["stderr_tail"] and any("Fatal Python error: boom" in m for m in messages)
    assert "failed: the worker exited" in report.markdown(record)


def test_missing_official_environment_is_skipped(tmp_path, monkeypatch):
    monkeypatch.delenv("HIERA_OFFICIAL_PYTHON", raising=False)
    launch, missing = runner.launchers(str(tmp_path / "venv" / "bin" / "python"))
    assert "official" not in launch and "ours" in launch
    assert "tests/reference/official_env.py .cache/reference" in missing["official"]
    monkeypatch.setenv("HIERA_OFFICIAL_PYTHON", str(tmp_path / "nowhere"))
    assert runner.default_official_python() == tmp_path / "nowhere"
    log, messages = [], []
    cases = plan.plan(["inference"], "hiera_small_224", [Variant("ours"), Variant("official")], batches=[1])
    record = runner.run_plan(cases, Settings(rounds=1, iters=1), launch, missing, messages.append,
                              lambda c: FakeWorker(c, log))
    assert {label for label, _ in log} == {"ours fp32"}
    assert record["results"][1]["skipped"].startswith("official not available")
    assert any(m.startswith("skipping official: ") and "official_env.py" in m for m in messages)
    assert "- official skipped: " in report.markdown(record)


def test_compare_cli_end_to_end(tmp_path, capsys):
    """ours and timm on a tiny model through `hiera benchmark --compare`; no official environment."""
    out = tmp_path / "out"
    code = run_cli(["benchmark", "--compare", "--variants", "ours:fp32", "timm:fp32", "official:fp32", "vit_s16:fp32",
                    "--mode", "inference", "--batch-size", "2", "--kwargs", json.dumps(TINY), "--rounds", "2",
                    "--iters", "1", "--warmup", "1", "--official-python", str(tmp_path / "none" / "python"),
                    "--json", str(out / "r.json"), "--plot", str(out / "r.png")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "| ours fp32 |" in captured.out and "| timm fp32 |" in captured.out
    assert "official skipped" in captured.out and "official_env.py" in captured.err
    assert "[inference batch 2] round 2/2 timm fp32" in captured.err
    record = json.loads((out / "r.json").read_text())
    ours, timm_, official, vit = record["results"]
    assert ours["throughput"] > 0 and timm_["throughput"] > 0 and official["skipped"]
    assert vit["throughput"] > 0 and vit["input_size"] == [64, 64] and ours["vs_vit_s16"] > 0
    assert "| timm ViT-S/16 fp32 |" in captured.out and "throughput ours / timm ViT-S/16" in captured.out
    assert record["system"]["measured_peak_tflops"]["fp32"] > 0 and ours["mfu"] > 0
    assert ours["params_m"] == pytest.approx(timm_["params_m"])  # the same architecture
    assert ours["input_size"] == [64, 64] and ours["rounds"] == 2 and ours["peak_rss_mb"] > 10
    assert ours["vs_best_peer"] > 0 and ours["best_peer"] == "timm fp32"
    assert record["implementations"]["timm"]["version"] and record["options"]["rounds"] == 2
    assert (out / "r.png").read_bytes()[:8] == PNG


def test_compare_cli_errors(capsys):
    assert run_cli(["benchmark", "--model", "hiera_tiny_224", "--rounds", "2"]) == 2
    assert "--rounds needs --compare" in capsys.readouterr().err
    assert run_cli(["benchmark", "--model", "hiera_tiny_224", "--mode", "inference", "train"]) == 2
    assert "one --mode at a time" in capsys.readouterr().err
    for argv, message in (
        (["--variants", "mine:fp32"], "bad variant"),
        (["--impl", "ours", "--variants", "ours:fp32"], "not both"),
        (["--kwargs", "{nope"], "--kwargs is not JSON"),
        (["--kwargs", "[1]"], "JSON object"),
        (["--weights", "x.pt"], "random weights"),
        (["--model", "hiera_gigantic_224"], "no zoo model"),
        (["--rounds", "0"], "rounds must be >= 1"),
        (["--batch-size", "0"], "must be >= 1"),
        (["--device", "tpu"], "cpu or cuda"),
    ):
        assert run_cli(["benchmark", "--compare", *argv]) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_against_the_official_package(official_python):
    """ours and the official package, tiny, inference and MAE training, interleaved (the official
    environment comes from the conftest fixture, which builds it on a fresh clone)."""
    variants = [Variant("ours"), Variant("official")]
    cases = plan.plan(["inference", "train"], "hiera_tiny_224", variants, batches=[2], train_batch=2,
                         tasks=["mae"], overrides=TINY)
    launch, missing = runner.launchers(str(official_python))
    assert "official" not in missing, missing
    record = runner.run_plan(cases, Settings(rounds=2, iters=1, warmup=1, timeout=300), launch=launch)
    by = {(r["impl"], r["mode"]): r for r in record["results"]}
    assert not [r for r in record["results"] if r.get("error")], record["results"]
    assert by["official", "inference"]["params_m"] == pytest.approx(by["ours", "inference"]["params_m"])
    assert by["ours", "inference"]["vs_official"] > 0 and by["ours", "train"]["memory_vs_official"] > 0
    info = record["implementations"]["official"]
    assert info["version"] == "0.1.4"
    assert not info["file"].startswith(os.path.dirname(hiera.__file__))  # not our package
