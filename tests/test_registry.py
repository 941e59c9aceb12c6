"""Registries, --model-args parsing and conversion, and third-party entry points."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import registry
from bench.errors import ConfigError
from tests.plugin_utils import install_plugin, run_bench


def test_parse_model_args() -> None:
    assert registry.parse_model_args("path=a.jsonl, seed=3") == {"path": "a.jsonl", "seed": "3"}
    assert registry.parse_model_args("a=x=y") == {"a": "x=y"}
    assert registry.parse_model_args(None) == {}


@pytest.mark.parametrize(("text", "message"), [("path", "not key=value"), ("=3", "not key=value"),
                                               ("a=1,a=2", "given twice")])
def test_bad_model_args(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        registry.parse_model_args(text)


def test_build_adapter_converts_by_type_hint() -> None:
    adapter = registry.build_adapter("random", {"seed": "42"}, device="cpu")
    assert adapter.seed == 42 and adapter.init_args == {"seed": 42}
    runtime_only = registry.build_adapter("random", {}, seed=7)
    assert runtime_only.seed == 7


def test_fingerprint_depends_on_args() -> None:
    a = registry.build_adapter("random", {"seed": "1"})
    b = registry.build_adapter("random", {"seed": "2"})
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() == registry.build_adapter("random", {"seed": "1"}).fingerprint()


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("oracel", {}, "unknown model 'oracel'. Did you mean oracle"),
        ("random", {"sed": "1"}, "does not take --model-args sed; it takes: seed"),
        ("random", {"seed": "x"}, r"--model-args seed='x'"),
        ("replay", {}, r"needs --model-args path=\.\.\."),
    ],
)
def test_adapter_errors(name: str, args: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        registry.build_adapter(name, args)


def test_task_expansion_and_errors() -> None:
    assert registry.expand_tasks("pope") == (["pope-random", "pope-popular", "pope-adversarial"], ["pope"])
    assert registry.expand_tasks("pope-random,pope") == (
        ["pope-random", "pope-popular", "pope-adversarial"], ["pope"])
    with pytest.raises(ConfigError, match="unknown task 'pope-adversrial'. Did you mean pope-adversarial"):
        registry.expand_tasks("pope-adversrial")


PLUGIN = '''
from bench.adapter import Adapter, Capabilities
from bench.registry import register_task
from tasks.pope import PopeRandom


class Contrarian(Adapter):
    description = "says No (a third-party test adapter)"
    capabilities = Capabilities(needs_images=False)

    def generate(self, requests):
        return ["No" for _ in requests]


class MyPope(PopeRandom):
    description = "POPE random under another name (a third-party test task)"
'''


def test_entry_points_register_adapters_and_tasks(tmp_path: Path, pope_root: Path) -> None:
    site = install_plugin(tmp_path / "site", "contrarian_plugin", PLUGIN, {
        "bench.adapters": {"contrarian": "contrarian_plugin:Contrarian"},
        "bench.tasks": {"my-pope": "contrarian_plugin:MyPope"},
    })
    listed = run_bench("list", site=site)
    assert listed.returncode == 0, listed.stderr
    assert "contrarian" in listed.stdout and "my-pope" in listed.stdout
    result = run_bench("run", "--model", "contrarian", "--task", "my-pope", "--data-root", str(pope_root),
                       "--output", str(tmp_path / "out"), site=site)
    assert result.returncode == 0, result.stderr
    assert "| my-pope" in result.stdout
    scores = json.loads((tmp_path / "out" / "results.json").read_text())["results"]["my-pope"]
    assert scores == {"accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0}


def test_task_args_reach_only_tasks_that_declare_them(tmp_path: Path) -> None:
    from bench.task import Task

    class Capped(Task):
        name = "capped-test-task"

        def __init__(self, data_root: Path, split: str | None = None, *, max_candidates: int = 10,
                     strict: bool = False) -> None:
            super().__init__(data_root, split)
            self.max_candidates, self.strict = max_candidates, strict

        load_samples = build_requests = process = aggregate = None  # type: ignore[assignment]

    registry.register_task(Capped)
    capped, pope = registry.build_tasks(["capped-test-task", "pope-random"], tmp_path, None,
                                        {"max_candidates": "20", "strict": "yes"})
    assert (capped.max_candidates, capped.strict) == (20, True)
    assert pope.name == "pope-random"
    with pytest.raises(ConfigError, match="no selected task takes --task-args max_cands"):
        registry.build_tasks(["capped-test-task"], tmp_path, None, {"max_cands": "3"})
    with pytest.raises(ConfigError, match="--task-args max_candidates='x'"):
        registry.build_tasks(["capped-test-task"], tmp_path, None, {"max_candidates": "x"})
