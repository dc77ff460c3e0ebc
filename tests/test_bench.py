"""The benchmark suites run: asv's configuration, every suite on tiny shapes, the commit-range script.

Fast checks only: the layers are built with 8 channels and the models are the registry's tiny_* ones, so
each suite method runs in well under a second; the real shapes are asv's and test_ratios' business.
"""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import common, layers, models
from impl import subnormals

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny(monkeypatch):
    """Shrink the builders: 8 channels, 3 heads, batch 2, tiny models."""
    monkeypatch.setattr(common, "CHANNELS", 8)
    monkeypatch.setattr(common, "HEADS", 3)
    monkeypatch.setattr(common, "LAYER_BATCH", {"cpu": 2, "cuda": 2})
    monkeypatch.setattr(common, "MODEL_BATCH", {"cpu": 2, "cuda": 2})
    from impl.models import build

    monkeypatch.setattr(common, "_cpu_model", lambda name: build("tiny_" + name.removeprefix("sa_")))
    common._cpu_layer.cache_clear()
    common.base_conv.cache_clear()
    yield
    common._cpu_layer.cache_clear()
    common.base_conv.cache_clear()


def _load_asv_conf() -> dict:
    text = (ROOT / "asv.conf.json").read_text()
    return json.loads(re.sub(r"^\s*//.*$", "", text, flags=re.M))


def test_asv_conf_has_the_project_layout():
    conf = _load_asv_conf()
    assert conf["benchmark_dir"] == "bench"
    assert conf["results_dir"] == "bench/results"
    assert conf["html_dir"] == ".asv/html"
    assert conf["environment_type"] == "virtualenv"
    assert conf["pythons"] == ["3.11"]
    assert conf["branches"] == ["main"]
    assert conf["repo"] == "."
    assert all("constraints.txt" in cmd for cmd in conf["install_command"][:1])


def _methods(cls):
    return [name for name, _ in inspect.getmembers(cls, inspect.isfunction)
            if name.startswith(("time_", "track_"))]


def _run_suite(cls, params) -> dict:
    """setup + every time_/track_ method of `cls` for one parameter combination; returns track values."""
    results = {}
    for method in _methods(cls):
        bench = cls()
        bench.setup(*params)
        try:
            results[method] = getattr(bench, method)(*params)
        finally:
            if hasattr(bench, "teardown"):
                bench.teardown(*params)
    return results


@pytest.mark.parametrize("path", common.LAYER_PATHS)
def test_layer_suite_runs(tiny, path):
    results = _run_suite(layers.Layer, (path, 16, "cpu"))
    assert results["track_peak_memory"] >= 0


def test_layer_ratio_is_a_ratio(tiny):
    ratio = _run_suite(layers.LayerRatio, ("separable-quadratic", 16, "cpu"))["track_ratio_to_conv"]
    assert 0 < ratio < float("inf")


@pytest.mark.parametrize("name", common.MODELS)
def test_model_suite_runs(tiny, name):
    results = _run_suite(models.TrainStep, (name, "cpu", "float32"))
    assert results["track_images_per_second"] > 0
    assert results["track_gflops_per_second"] > 0


def test_units_are_declared():
    for cls in (layers.Layer, layers.LayerRatio, models.TrainStep):
        for name in _methods(cls):
            if name.startswith("track_"):
                assert getattr(getattr(cls, name), "unit", None), f"{cls.__name__}.{name} has no unit"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip without a GPU")
def test_cuda_and_bf16_cases_are_skipped_not_failed(tiny):
    with pytest.raises(NotImplementedError):
        layers.Layer().setup("conv", 16, "cuda")
    with pytest.raises(NotImplementedError):
        layers.LayerBF16().setup("conv", 16, "cpu")
    for params in (("resnet18", "cpu", "bf16-autocast"), ("resnet18", "cuda", "float32")):
        step = models.TrainStep()
        with pytest.raises(NotImplementedError):
            step.setup(*params)
        step.teardown(*params)  # asv tears a skipped case down too
        assert not subnormals.flushing()
    with pytest.raises(NotImplementedError):
        layers.Layer().setup("learned-content", 32, "cpu")


def test_train_step_flushes_subnormals_until_teardown(tiny):
    step = models.TrainStep()
    step.setup("resnet18", "cpu", "float32")
    try:
        assert subnormals.flushing() == subnormals.flushing_requested()
    finally:
        step.teardown("resnet18", "cpu", "float32")
    assert not subnormals.flushing()


def test_bad_parameters_name_the_allowed_values():
    with pytest.raises(ValueError, match="device must be one of"):
        common.require_device("tpu")
    with pytest.raises(ValueError, match="path must be one of"):
        common.layer("nope", 16, "cpu")
    with pytest.raises(ValueError, match="name must be one of"):
        common.model("vgg", "cpu")


def test_run_commits_script_is_valid_bash_and_rejects_an_empty_range():
    script = ROOT / "bench" / "run_commits.sh"
    assert script.stat().st_mode & 0o111, "bench/run_commits.sh must be executable"
    subprocess.run(["bash", "-n", str(script)], check=True)
    done = subprocess.run([str(script), "HEAD..HEAD"], cwd=ROOT, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert done.returncode == 2, done.stderr
    assert "no commits" in done.stderr


@pytest.fixture
def stub_python(tmp_path):
    """An interpreter stand-in for the benchmark scripts: `-c` checks pass (asv and torch importable, a CUDA
    device present), and each `-m asv ...` call is logged with the ASV_PYTHONPATH it gets and the commit
    checked out where that path's first entry points. Returns (path, log)."""
    log = tmp_path / "calls.log"
    stub = tmp_path / "python"
    stub.write_text(f"""#!/bin/bash
[ "$1" = -c ] && exit 0
first="${{ASV_PYTHONPATH%%:*}}"
echo "$* | ASV_PYTHONPATH=$ASV_PYTHONPATH | tree=$(git -C "${{first:-/nonexistent}}" rev-parse HEAD 2>/dev/null)" >> {log}
""")
    stub.chmod(0o755)
    return stub, log


def _asv_runs(log: Path) -> list[tuple[str, str, str]]:
    """(commit hash asked for, ASV_PYTHONPATH, commit checked out there) of each logged `asv run`."""
    runs = []
    for line in log.read_text().splitlines():
        args, path, tree = line.split(" | ")
        if args.startswith("-m asv run"):
            runs.append((re.search(r"--set-commit-hash (\S+)", args).group(1), path.split("=", 1)[1],
                         tree.split("=", 1)[1]))
    return runs


def test_run_commits_benchmarks_each_commits_own_code(stub_python):
    """asv drops PYTHONPATH from its benchmarks' environment: the commit's tree goes to them through
    ASV_PYTHONPATH, checked out at that commit while asv runs."""
    stub, log = stub_python
    commits = subprocess.run(["git", "rev-list", "--reverse", "HEAD~2..HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    done = subprocess.run([str(ROOT / "bench" / "run_commits.sh"), "HEAD~2..HEAD"], cwd=ROOT,
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PYTHON": str(stub)})
    assert done.returncode == 0, done.stderr
    runs = _asv_runs(log)
    assert [asked for asked, _, _ in runs] == commits
    for asked, path, tree in runs:
        assert tree == asked, f"asv ran {asked} with {path} at {tree}"


def test_gpu_session_hands_the_checkout_to_asv(stub_python, tmp_path):
    """The device image does not install the repository: its asv phase puts it on ASV_PYTHONPATH."""
    stub, log = stub_python
    env = {"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out"), "PYTHON": str(stub), "MACHINE": "stub-gpu"}
    subprocess.run([str(ROOT / "bench" / "gpu_session.sh"), "asv"], cwd=ROOT, capture_output=True, text=True,
                   env=env)
    runs = _asv_runs(log)
    assert len(runs) == 1 and runs[0][1].split(":")[0] == str(ROOT), log.read_text()
    assert not (ROOT / "bench" / "results" / "stub-gpu").exists()


def test_gpu_session_targets_phase_measures_every_target_in_one_call(stub_python, tmp_path):
    """The short phase for a 15-minute lease: the CUDA tests, then the layer ratios in bf16 (paths that exist),
    the two models' images/s (sa_quadratic's compiled in bf16 too) and their FLOP rates, each step under a
    time limit that fits one call."""
    from bench import common

    stub, log = stub_python
    out = tmp_path / "out"
    env = {"PATH": "/usr/bin:/bin", "OUT": str(out), "PYTHON": str(stub)}
    done = subprocess.run([str(ROOT / "bench" / "gpu_session.sh"), "targets"], cwd=ROOT, capture_output=True,
                          text=True, env=env)
    assert done.returncode == 0, done.stderr
    calls = [line.split(" | ")[0].split() for line in log.read_text().splitlines()]
    assert [call[1] for call in calls] == ["pytest", "bench.ratios", "bench.throughput", "bench.throughput",
                                           "bench.flop_rate"]
    assert "--compile" in calls[3] and "bf16-autocast" in calls[3] and "sa_quadratic" in calls[3]
    assert "verify/test_devices.py" in calls[0]
    ratios = calls[1]
    assert ratios[ratios.index("--device") + 1] == "cuda"
    assert ratios[ratios.index("--precision") + 1] == "bf16-autocast"
    paths = ratios[ratios.index("--paths") + 1].split(",")
    assert "separable-quadratic" in paths and set(paths) <= set(common.LAYER_PATHS)
    limits = [int(n) for n in re.findall(r"timeout (\d+)", (ROOT / "bench" / "gpu_session.sh").read_text().split(
        "targets)\n", 1)[1].split(";;", 1)[0])]
    assert len(limits) == 5 and sum(limits) <= 400
    assert (out / "targets.txt").read_text().rstrip().endswith("exit status 0")


def test_ratio_tables_are_not_in_the_default_test_run():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "bench" not in config["tool"]["pytest"]["ini_options"]["testpaths"]


def test_sharing_ab_prints_both_ratios(tiny, capsys):
    from bench import sharing

    assert sharing.main(["--sizes", "4", "--rounds", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 4x4 |")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert len(cells) == 6 and float(cells[2]) > 0 and float(cells[4]) > 0


def test_flop_rate_prints_both_models(tiny, capsys):
    from bench import flop_rate

    assert flop_rate.main(["--batch", "2", "--rounds", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for model in ("sa_quadratic", "resnet18"):
        row = next(line for line in out.splitlines() if line.startswith(f"| {model} |"))
        assert float(row.strip("|").split("|")[3]) > 0  # GFLOP/s
    assert "FLOP rate sa_quadratic / resnet18: median" in out


def test_subnormals_compares_the_plain_softmax_with_the_layers_probabilities(capsys):
    from bench import subnormals

    assert subnormals.main(["--rounds", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    counts = re.search(r"subnormal entries: plain softmax (\d+), the layer's (\d+)", out)
    assert counts and int(counts[1]) > 0 and int(counts[2]) == 0
    rows = [line for line in out.splitlines() if line.startswith("| mixing pass") or line.startswith("| attention")]
    assert len(rows) == 4 and all(float(row.strip("|").split("|")[1]) > 0 for row in rows)


def test_profile_layer_lists_the_ops_of_both(tiny, capsys):
    from bench import profile_layer

    assert profile_layer.main(["--size", "4", "--steps", "1", "--top", "3"]) == 0
    out = capsys.readouterr().out
    for kind in ("unprofiled (wall clock, median): separable-quadratic ", "profiled (sum of self CPU times): "):
        line = next(line for line in out.splitlines() if line.startswith(kind))
        assert float(line.split(" = ")[1].split(" x conv")[0]) > 0
    assert "| conv: op | ms | / conv | calls |" in out and "| separable-quadratic: op | ms | / conv | calls |" in out
    listed = [line for line in out.splitlines() if line.startswith("| aten::")]
    assert any("mkldnn_convolution" in line for line in listed)  # both forwards run through oneDNN
    with pytest.raises(SystemExit):
        profile_layer.main(["--path", "conv"])


def test_profile_layer_forward_only_profiles_no_backward(tiny, capsys):
    from bench import profile_layer

    assert profile_layer.main(["--size", "4", "--steps", "1", "--top", "40", "--forward-only"]) == 0
    out = capsys.readouterr().out
    assert "forward (eval, no_grad)" in out
    listed = [line for line in out.splitlines() if line.startswith("| aten::")]
    assert any("mkldnn_convolution" in line for line in listed)
    assert not any("backward" in line.lower() for line in listed)


def test_content_reference_computes_the_learned_content_layer(tiny):
    """The plain content + position formula (the fused kernels' reference) gives the layer's output."""
    fused = common.layer("learned-content", 6, "cpu")
    plain = common.layer("content-reference", 6, "cpu")
    assert isinstance(plain, common.DenseReference) and plain.layer is not fused
    plain.layer.load_state_dict(fused.state_dict())
    x = common.layer_input(6, "cpu")
    with torch.no_grad():
        torch.testing.assert_close(plain(x), fused(x))


def test_ratios_table_and_its_errors(tiny, capsys):
    from bench import ratios

    assert ratios.main(["--sizes", "4", "--rounds", "1", "--min-run-time", "0.01", "--threads", "1",
                        "--paths", "separable-quadratic"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| separable-quadratic |"))
    assert float(row.strip("|").split("|")[3]) > 0
    for bad in (["--precision", "bf16-autocast"], ["--paths", "conv"], ["--cpu-time", "--threads", "2"]):
        with pytest.raises(SystemExit):
            ratios.main(bad)


def test_ratios_report_each_round_and_the_fastest_rounds(tiny, monkeypatch):
    """The median and range are of per-round ratios; the fastest column divides each side's own minimum."""
    from bench import ratios

    times = iter([2.0, 3.0, 1.0, 4.0])  # round 1: conv 2, ours 3; round 2: conv 1, ours 4
    monkeypatch.setattr(ratios, "_wall", lambda *args, **kwargs: next(times))
    (row,) = ratios.measure(["separable-quadratic"], [4], rounds=2, min_run_time=0.01, cpu_time=False)
    assert (row["low"], row["high"], row["ratio"]) == (1.5, 4.0, 2.75)
    assert row["fastest_ratio"] == 3.0


def test_ratios_forward_only_times_the_eval_forward_without_gradients(tiny, capsys, monkeypatch):
    """`--forward-only`: each side's forward in eval mode under no_grad, never a backward, so that no
    parameter gets a gradient and no graph is built; the header says which pass was timed."""
    from bench import ratios

    forwards = []  # (training, grad enabled) of every forward timed
    original_layer = common.layer

    def recording_layer(*args, **kwargs):
        module = original_layer(*args, **kwargs)  # cached only until `tiny` clears the cache, hook and all
        module.register_forward_hook(lambda m, i, o: forwards.append((m.training, torch.is_grad_enabled())))
        return module

    def no_backward(module, x):
        raise AssertionError("--forward-only ran a forward + backward")

    monkeypatch.setattr(common, "layer", recording_layer)
    monkeypatch.setattr(common, "forward_backward", no_backward)
    assert ratios.main(["--sizes", "4", "--rounds", "1", "--min-run-time", "0.01", "--threads", "1",
                        "--paths", "separable-quadratic", "--forward-only"]) == 0
    out = capsys.readouterr().out
    assert "forward (eval, no_grad)" in out and "forward + backward" not in out
    row = next(line for line in out.splitlines() if line.startswith("| separable-quadratic |"))
    assert float(row.strip("|").split("|")[3]) > 0
    assert forwards and set(forwards) == {(False, False)}


@pytest.mark.parametrize("path", ["conv", "separable-quadratic"])
def test_layer_pass_forward_only_leaves_no_gradient(tiny, path):
    """`common.layer_pass`: forward_only gives no parameter a gradient; the default pass gives every one."""
    module = common.layer(path, 4, "cpu")
    common.layer_pass(module.eval(), common.layer_input(4, "cpu"), forward_only=True)
    assert all(p.grad is None for p in module.parameters())
    common.layer_pass(module.train(), common.layer_input(4, "cpu", requires_grad=True))
    assert all(p.grad is not None for p in module.parameters() if p.requires_grad)


def test_throughput_projects_every_paper_run(tiny, capsys):
    from bench import throughput

    assert throughput.main(["--batch", "2", "--rounds", "1", "--steps", "1", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| run | model | epochs |"))
    runs = lines[header + 2:]
    assert [line.split("|")[1].strip() for line in runs] == [run for run, _, _ in common.PAPER_RUNS]
    assert all(float(line.split("|")[4]) > 0 for line in runs)
    with pytest.raises(SystemExit):
        throughput.main(["--precisions", "bf16-autocast"])
    with pytest.raises(SystemExit):
        throughput.main(["--models", "vgg"])


def test_throughput_times_compiled_models(tiny):
    """`--compile`: the models run through torch.compile (aot_eager here: no C++ compiler needed), each
    compiled in the warm-up; a rate per model and round."""
    from bench import throughput

    torch._dynamo.reset()
    with common.intra_op_threads(1):
        rates = throughput.measure(["sa_quadratic", "resnet18"], ["float32"], "cpu", 2, 1, 1, "aot_eager")
    assert set(rates) == {("sa_quadratic", "float32"), ("resnet18", "float32")}
    assert all(len(v) == 1 and v[0] > 0 for v in rates.values())


def test_gpu_session_script_is_valid_bash_and_rejects_unknown_phases(tmp_path):
    script = ROOT / "bench" / "gpu_session.sh"
    assert script.stat().st_mode & 0o111, "bench/gpu_session.sh must be executable"
    subprocess.run(["bash", "-n", str(script)], check=True)
    env = {"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out")}
    for args in ([], ["tests", "bogus"]):
        done = subprocess.run([str(script), *args], cwd=ROOT, capture_output=True, text=True, env=env)
        assert done.returncode == 2, done.stderr
    assert not (tmp_path / "out").exists()  # nothing runs before every phase is known
    if not torch.cuda.is_available():  # and nothing is recorded under the GPU's name on a machine without one
        done = subprocess.run([str(script), "layers"], cwd=ROOT, capture_output=True, text=True,
                              env=dict(env, PYTHON=sys.executable))
        assert done.returncode == 3 and "no CUDA device" in done.stderr, done.stderr
        assert not (tmp_path / "out").exists()


def _account_rows(out: str) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines():
        if line.startswith("| ") and not line.startswith(("| function", "|---")):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_account_separates_a_callees_time_from_its_callers():
    import time as clock

    from bench.account import Account

    account = Account()
    inner = account.timed("inner", lambda: clock.sleep(0.02))
    outer = account.timed("outer", lambda: (clock.sleep(0.01), inner()))
    outer()
    assert account.calls == {"inner": 1, "outer": 1}
    assert account.inclusive["outer"] >= 0.03 and account.exclusive["inner"] >= 0.02
    assert account.exclusive["outer"] == pytest.approx(account.inclusive["outer"] - account.inclusive["inner"])
    assert account.exclusive["outer"] < 0.02  # the 20 ms spent in `inner` is not counted twice


def test_account_layer_times_the_fused_path_and_restores_it(tiny, capsys):
    from bench import account
    from impl.attention import dense_merge, product_merge

    before = {name: product_merge.__dict__[name] for name in ("project", "axis_apply")}
    mask = dense_merge.__dict__["keep_mask"]
    forward = product_merge.ProductMerge.__dict__["forward"]
    assert account.main(["--size", "4", "--batch", "2", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    ratio = next(line for line in out.splitlines() if line.startswith("separable-quadratic "))
    assert float(ratio.split(" = ")[1].split(" x conv")[0]) > 0
    rows = _account_rows(out)
    assert rows["ProductMerge.forward"][0] == "1" and rows["ProductMerge.backward"][0] == "1"  # calls a pass
    for label, (calls, inclusive, exclusive, _) in rows.items():
        if label != "outside":
            assert float(inclusive) >= float(exclusive) >= 0, label
    assert {name: product_merge.__dict__[name] for name in before} == before
    assert dense_merge.__dict__["keep_mask"] is mask
    assert product_merge.ProductMerge.__dict__["forward"] is forward


def test_account_model_counts_every_mask_and_attention_call(tiny, capsys):
    from bench import account

    assert account.main(["--model", "sa_quadratic", "--batch", "2", "--rounds", "1", "--threads", "1"]) == 0
    rows = _account_rows(capsys.readouterr().out)
    depth = len(common.model("sa_quadratic", "cpu").layers)
    assert rows["DenseMerge.forward"][0] == str(depth)  # the fused attention dropout path
    assert rows["keep_mask"][0] == str(3 * depth)  # one attention mask and two hidden-state masks a layer


def test_account_restores_the_functions_when_the_body_raises():
    from bench.account import accounting
    from impl.attention import positional_merge

    project = positional_merge.project
    with pytest.raises(RuntimeError):
        with accounting():
            assert positional_merge.project is not project
            raise RuntimeError("boom")
    assert positional_merge.project is project


def test_account_rejects_unknown_layers_and_models(tiny):
    from bench import account

    with pytest.raises(SystemExit):
        account.main(["--layer", "conv"])
    with pytest.raises(SystemExit):
        account.main(["--model", "no_such_model", "--rounds", "1"])
    with pytest.raises(SystemExit):
        account.main(["--layer", "learned", "--model", "sa_quadratic"])


# Imports every module under bench/ as asv's discovery does, with every top-level module whose
# distributions are all outside `allowed` made unimportable, as if not installed.
_DISCOVERY_WITHOUT = """
import importlib, importlib.abc, importlib.metadata as md, json, pkgutil, sys
from packaging.utils import canonicalize_name
allowed = set(json.loads(sys.argv[1]))
owners = md.packages_distributions()
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        top = name.partition(".")[0]
        dists = {canonicalize_name(d) for d in owners.get(top, ())}
        if dists and not dists & allowed:
            raise ModuleNotFoundError(f"No module named {name!r} (not in asv's environment)", name=name)
sys.meta_path.insert(0, Absent())
import bench
for module in pkgutil.walk_packages(bench.__path__, "bench."):
    importlib.import_module(module.name)
"""


def _installed_closure(requirements) -> set[str]:
    """The distributions `requirements` pull in, transitively (extras and markers honoured), as installed
    here: normalised names."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen, todo = set(), [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        wanted = {(name, extra) for extra in {"", *req.extras}} - seen
        if not wanted:
            continue
        seen |= wanted
        try:
            needs = [Requirement(r) for r in metadata.requires(name) or []]
        except metadata.PackageNotFoundError:  # not for this platform
            continue
        todo += [r for r in needs
                 if r.marker is None or any(r.marker.evaluate({"extra": extra}) for _, extra in wanted)]
    return {name for name, _ in seen}


def test_asv_environments_can_import_every_benchmark_module():
    """`asv run` over a range of commits installs each commit's wheel (with the extras its install command
    names) in a virtualenv, then imports every module under bench/ (the current checkout's) to run the
    benchmarks: a module needing a package outside that environment fails every commit, as
    bench/test_ratios.py's `import pytest` once did."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    install = _load_asv_conf()["install_command"][0]
    extras = ",".join(re.findall(r"\{wheel_file\}\[([\w,]+)\]", install))
    requirements = list(project["dependencies"])
    for extra in filter(None, extras.split(",")):
        requirements += project["optional-dependencies"][extra]
    allowed = _installed_closure(requirements + ["pip", "setuptools"]) | {project["name"]}
    done = subprocess.run([sys.executable, "-c", _DISCOVERY_WITHOUT, json.dumps(sorted(allowed))], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_profile_layer_by_shape_gives_the_products_rates(tiny, capsys):
    from bench import profile_layer

    assert profile_layer.product_flops("aten::mm", [[2, 3], [3, 5]]) == 2 * 2 * 3 * 5
    baddbmm_inputs = [[4, 2, 5], [4, 2, 3], [4, 3, 5], [], []]  # self, then the factors (4 x) 2 x 3 by 3 x 5
    assert profile_layer.product_flops("aten::baddbmm_", baddbmm_inputs) == 2 * 4 * 2 * 3 * 5
    assert profile_layer.product_flops("aten::copy_", [[2, 3], [2, 3], []]) is None
    assert profile_layer.main(["--size", "4", "--steps", "1", "--top", "40", "--by-shape"]) == 0
    out = capsys.readouterr().out
    assert "| separable-quadratic: op [input shapes] | ms | / conv | calls | GFLOP/s |" in out
    products = [line.strip("|").split("|") for line in out.splitlines()
                if line.startswith(("| aten::mm [", "| aten::bmm [", "| aten::baddbmm_ [", "| aten::addmm_ ["))]
    assert products and all(float(cells[-1]) > 0 for cells in products)
    copies = [line.strip("|").split("|") for line in out.splitlines() if line.startswith("| aten::copy_ [")]
    assert all(cells[-1].strip() == "" for cells in copies)  # no rate for what is not a product


def test_every_committed_result_carries_its_machines_committed_description():
    """asv draws results whose machine descriptions differ as separate lines: each machine's results under
    bench/results/ must carry its machine.json (recorded after `python -m bench.register_machine NAME`)."""
    from bench.register_machine import committed_description

    machines = [p.parent.name for p in (ROOT / "bench" / "results").glob("*/machine.json")]
    assert {"cpu-2core", "cpu-2core-xeon", "cpu-2core-epyc-avx2"} <= set(machines)
    for name in machines:
        description = committed_description(name)
        for result in (ROOT / "bench" / "results" / name).glob("*-*.json"):
            params = {k: v for k, v in json.loads(result.read_text())["params"].items() if k != "python"}
            assert params == description, f"{result.relative_to(ROOT)}: {params} is not {description}"


def test_register_machine_writes_the_committed_description(tmp_path, capsys):
    from bench import register_machine

    machine_file = tmp_path / "asv-machine.json"
    machine_file.write_text(json.dumps({"other": {"machine": "other", "cpu": "x"}, "version": 1}))
    described = register_machine.register("cpu-2core-xeon", machine_file=machine_file)
    held = json.loads(machine_file.read_text())
    assert held["cpu-2core-xeon"] == described == register_machine.committed_description("cpu-2core-xeon")
    assert "Xeon" in described["cpu"] and held["other"] == {"machine": "other", "cpu": "x"}
    with pytest.raises(ValueError, match="not recorded.*cpu-2core-xeon"):
        register_machine.register("no-such-machine", machine_file=machine_file)
    with pytest.raises(SystemExit):
        register_machine.main(["no-such-machine"])
    assert "no-such-machine" in capsys.readouterr().err
