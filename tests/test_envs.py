"""The conda envs in envs/ run their rules: conda cannot run here, so the check is static.

Each rule's shell calls verbs of ``python -m msgfm``; a verb imports its library lazily
(msgfm/cli.py), so the third-party modules a job needs are those imported by the code the verb
reaches. They are followed through msgfm's modules (every import in a module it reaches, also
inside functions, and module names given as strings to ``importlib.import_module``; an
``except ImportError`` fallback is an optional backend, left out) and mapped to the
distributions that provide them in this venv. Imports that libraries make themselves (pandas'
pyarrow, tabulate, jinja2) are not seen: the env files list those by hand.
"""

from __future__ import annotations

import ast
import re
import sys
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

ROOT = Path(__file__).resolve().parents[1]

# conda-forge names whose Python distribution is called otherwise.
CONDA_TO_PYPI = {"pytorch": "torch", "pytorch-gpu": "torch", "pytorch-cpu": "torch"}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def module_file(module: str) -> Path | None:
    """msgfm's source file of ``module`` (a package's __init__.py), None outside msgfm."""
    parts = module.split(".")
    if parts[0] != "msgfm":
        return None
    base = ROOT.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _optional(node: ast.Try) -> bool:
    """A ``try: import x / except ImportError`` block: x is an optional backend."""
    names = set()
    for handler in node.handlers:
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        names |= {kind.id for kind in kinds if isinstance(kind, ast.Name)}
    return bool(names & {"ImportError", "ModuleNotFoundError"})


def imports_in(nodes: list[ast.stmt], package: str) -> set[str]:
    """Absolute names of every module imported in ``nodes`` (``from a import b``: a and a.b,
    as b may be a submodule; a string naming a msgfm module, for import_module), optional
    imports and docstrings left out."""
    found = set()
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Try) and _optional(node):
            stack.extend(node.finalbody)
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and module_file(node.value)
        ):
            found.add(node.value)
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing package
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}".rstrip(".")
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
        stack.extend(ast.iter_child_nodes(node))
    return found


@cache
def parsed(module: str) -> ast.Module:
    return ast.parse(module_file(module).read_text())


def third_party(roots: set[str]) -> set[str]:
    """Top-level names of the non-stdlib modules imported from ``roots`` through msgfm."""
    seen: set[str] = set()
    outside: set[str] = set()
    todo = set(roots)
    while todo:
        name = todo.pop()
        if name.split(".")[0] != "msgfm":
            outside.add(name.split(".")[0])
            continue
        # Importing a.b.c runs a/__init__ and a/b/__init__ first.
        parts = name.split(".")
        for module in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):
            if module in seen or module_file(module) is None:
                continue
            seen.add(module)
            is_package = module_file(module).name == "__init__.py"
            package = module if is_package else module.rsplit(".", 1)[0]
            todo |= imports_in(parsed(module).body, package) - seen
    return outside - set(sys.stdlib_module_names) - {"__future__"}


@cache
def verb_roots() -> dict[str, set[str]]:
    """For each verb of msgfm/cli.py, the modules it imports: the module's own imports, those
    of build_parser and main (run for every verb), and its handler's, following the cli
    functions the handler calls."""
    tree = parsed("msgfm.cli")
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    top = [node for node in tree.body if not isinstance(node, ast.FunctionDef)]
    common = imports_in([*top, functions["build_parser"], functions["main"]], "msgfm")
    roots = {}
    for call in ast.walk(functions["build_parser"]):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "verb":
            verb, handler = call.args[0].value, call.args[1].id
            reached, todo = set(), [handler]
            while todo:
                reached.add(name := todo.pop())
                called = {
                    node.func.id
                    for node in ast.walk(functions[name])
                    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                }
                todo += [c for c in called if c in functions and c not in reached]
            roots[verb] = common | imports_in([functions[name] for name in reached], "msgfm")
    return roots


def workflow_rules(configfile: str, config: dict) -> dict[str, tuple[str | None, str | None]]:
    """Each rule of the workflow under a config, as Snakemake parses it: its ``conda:`` env
    (relative to rules/) and its ``shell:`` command."""
    with SnakemakeApi(OutputSettings()) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(),
            config_settings=ConfigSettings(configfiles=[ROOT / configfile], config=config),
            snakefile=ROOT / "Snakefile",
            workdir=ROOT,
        )
        workflow.dag()  # parses the Snakefile and its rules
        return {rule.name: (rule.conda_env, rule.shellcmd) for rule in workflow._workflow.rules}


# The paper's config (real downloads, Fig. 4) and the demo's (demo data) with the tutel
# backend: every rule, and every env a rule's `conda:` can pick, under one of them.
CONFIGS = {
    "paper": ("config/config.yaml", {}),
    "demo-tutel": ("config/demo.yaml", {"model": {"preset": "demo", "moe": {"backend": "tutel"}}}),
}
RULES = {
    (name, rule): (env, shell)
    for name, (configfile, config) in CONFIGS.items()
    for rule, (env, shell) in workflow_rules(configfile, config).items()
    if rule != "all"
}


def env_requirements(env: Path) -> dict[str, str]:
    """Normalised Python distribution name -> version spec of each conda and pip entry of an
    env file (a git URL: the repository's name, no spec)."""
    spec = yaml.safe_load(env.read_text())
    requirements = {}
    for entry in spec["dependencies"]:
        for item in entry["pip"] if isinstance(entry, dict) else [entry]:
            item = item.rsplit("/", 1)[-1].removesuffix(".git")
            name, version = re.match(r"([\w.-]+)(?:@\S*)?\s*(.*)", item).groups()
            requirements[normalise(CONDA_TO_PYPI.get(name, name))] = version
    return requirements


ENV_FILES = sorted((ROOT / "envs").glob("*.yaml"))
DISTRIBUTIONS = packages_distributions()  # import name -> distributions, in this venv


def rule_verbs(shell: str) -> set[str]:
    """The msgfm verbs a shell command runs (``launch ... -- pretrain`` runs two)."""
    return set(verb_roots()) & set(shell.split())


def test_every_rule_runs_a_verb_in_an_env():
    """What the tests below rely on: a rule without env or verb would pass them."""
    assert {rule for _, rule in RULES} >= {"prepare_dataset", "make_demo_data", "fig4"}
    for (config, rule), (env, shell) in RULES.items():
        assert env, f"rule {rule} ({config} config): no conda env"
        assert rule_verbs(shell), f"rule {rule}: no msgfm verb in {shell!r}"
    # Every env file runs some rule: none is left for a user to find.
    assert {(ROOT / "rules" / env).resolve() for env, _ in RULES.values()} == set(ENV_FILES)


@pytest.mark.parametrize(("config", "rule"), sorted(RULES))
def test_env_provides_every_module_its_verbs_import(config, rule):
    env, shell = RULES[config, rule]
    provided = env_requirements(ROOT / "rules" / env)
    roots = verb_roots()
    missing = {}
    for module in sorted(third_party(set().union(*(roots[verb] for verb in rule_verbs(shell))))):
        candidates = {normalise(name) for name in DISTRIBUTIONS.get(module, [module])}
        if not candidates & provided.keys():
            missing[module] = sorted(candidates)
    assert not missing, f"rule {rule} ({sorted(rule_verbs(shell))}): {env} lacks {missing}"


@pytest.mark.parametrize("env", ENV_FILES, ids=lambda path: path.name)
def test_env_pins_what_the_constraints_pin(env):
    """workflow/constraints.txt is the one place a version is pinned (the venv installs with
    it): an env that lists a pinned package pins it to the same release."""
    pins = {}
    for line in (ROOT / "workflow" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[normalise(name)] = f"=={version.strip()}"
    listed = env_requirements(env)
    wrong = {
        name: listed[name] for name in pins.keys() & listed.keys() if listed[name] != pins[name]
    }
    assert not wrong, f"{env.name}: {wrong}, but workflow/constraints.txt pins {pins}"


@pytest.mark.parametrize("env", ENV_FILES, ids=lambda path: path.name)
def test_env_installs_msgfm_from_the_checkout(env):
    """Snakemake runs envs/<env>.post-deploy.sh once after creating the env."""
    script = env.with_suffix(".post-deploy.sh")
    assert script.is_file(), f"{env.name}: no {script.name} to install msgfm"
    assert script.resolve() == ROOT / "envs" / "install_msgfm.sh"


def test_tutel_backend_runs_in_the_env_that_builds_tutel():
    """model.moe.backend: tutel imports tutel (msgfm/model/moe.py), an optional import the
    module walk above leaves out; the training rules then use envs/pretrain_tutel.yaml."""
    assert "tutel" in env_requirements(ROOT / "envs" / "pretrain_tutel.yaml")
    assert "tutel" not in env_requirements(ROOT / "envs" / "pretrain.yaml")
    for rule in ("pretrain", "finetune", "finetune_sensor_subset"):
        assert RULES["demo-tutel", rule][0] == "../envs/pretrain_tutel.yaml", rule
        assert RULES["paper", rule][0] == "../envs/pretrain.yaml", rule


def test_every_launched_rule_is_placed_by_the_slurm_profile():
    """A rule that runs the launcher (torchrun, the time-limit warning) needs the SLURM
    profile's placement: one task per node holding its GPUs, its CPUs, and the warning signal
    ahead of the limit. Snakemake's ``set-resources`` is keyed by rule name, so a rule derived
    with ``use rule ... as`` gets none of it unless it is named there too."""
    import yte

    profile = ROOT / "workflow" / "profiles" / "slurm" / "config.v9+.yaml"
    placed = yte.process_yaml(profile.read_text(), require_use_yte=True)["set-resources"]
    launched = {rule for (_, rule), (_, shell) in RULES.items() if "launch" in rule_verbs(shell)}
    assert launched >= {"pretrain", "finetune", "finetune_sensor_subset"}
    for rule in sorted(launched):
        assert rule in placed, f"rule {rule}: no set-resources in {profile.name}"
        assert "--signal=URG@" in placed[rule]["slurm_extra"], rule
