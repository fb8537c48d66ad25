"""The conda environments (envs/*.yaml) cover what each rule's script imports, pinned.

conda itself is not run here: the files are parsed, and for every rule of rules/*.smk the
third-party imports of its `script:` (and, transitively, of the rare_objects modules that it
imports) must be packages of the rule's `conda:` environment, each pinned to one version,
the same version as in envs/requirements.txt (the local virtual environment's pins).
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RULES_DIR = REPO / "rules"
ENVS_DIR = REPO / "envs"
PACKAGE = "rare_objects"

# Import name -> distribution name, where they differ (compared after normalize()).
IMPORT_TO_DIST = {
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "yaml": "pyyaml",
    "open_clip": "open_clip_torch",
    "cv2": "opencv-python",
    "faiss": "faiss-cpu",
    "attr": "attrs",
    "dateutil": "python-dateutil",
    "google.protobuf": "protobuf",
    "umap": "umap-learn",
}
# conda-forge package name -> the PyPI distribution it provides.
CONDA_TO_DIST = {
    "pytorch": "torch",
    "pytorch-cpu": "torch",
    "pytorch-gpu": "torch",
    "py-opencv": "opencv-python",
    "opencv": "opencv-python",
    "matplotlib-base": "matplotlib",
    "open-clip-torch": "open_clip_torch",
    "faiss": "faiss-cpu",
    "libfaiss": "faiss-cpu",
}
# Imports that the environment does not need to provide.
NOT_PACKAGES = {"snakemake", PACKAGE, "__future__"}


def normalize(name: str) -> str:
    """PEP 503 name normalization (open_clip_torch == open-clip-torch)."""
    return re.sub(r"[-_.]+", "-", name).lower()


# --- rules/*.smk --------------------------------------------------------------------------------
@dataclass
class RuleInfo:
    name: str
    source: Path
    conda: str | None = None
    # every env the directive may name: `"a.yaml" if SOMETHING else "b.yaml"` names two
    condas: list[str] = field(default_factory=list)
    script: str | None = None
    run: bool = False

    def path(self, value: str) -> Path:
        """A directive's path: relative to the folder of the file that defines the rule."""
        return (self.source.parent / value).resolve()


_RULE = re.compile(r"^(?:rule|checkpoint)\s+(\w+)\s*:", re.MULTILINE)


def _directive(body: str, name: str) -> str | None:
    match = re.search(
        rf"^\s+{name}:\s*(?:#[^\n]*)?\n?\s*[rf]?[\"']([^\"'\n]+)[\"']", body, re.MULTILINE
    )
    return match.group(1) if match else None


def _directive_choices(body: str, name: str) -> list[str]:
    """Every string literal on the line of a directive's value (a conditional names several)."""
    match = re.search(rf"^\s+{name}:\s*(?:#[^\n]*)?\n?(\s*[rf]?[\"'][^\n]*)$", body, re.MULTILINE)
    return re.findall(r"[\"']([^\"'\n]+)[\"']", match.group(1)) if match else []


def parse_rules(path: Path) -> list[RuleInfo]:
    """Rules of one .smk file with their conda:, script: and run: directives (by regex)."""
    text = path.read_text()
    matches = list(_RULE.finditer(text))
    rules = []
    for match in matches:
        rest = text[match.end() :]
        # The rule's body: the indented lines (and blank or comment lines) after its header.
        end = re.search(r"^(?=[^\s#])", rest, re.MULTILINE)
        body = rest[: end.start()] if end else rest
        rules.append(
            RuleInfo(
                name=match.group(1),
                source=path,
                conda=_directive(body, "conda"),
                condas=_directive_choices(body, "conda"),
                script=_directive(body, "script"),
                run=bool(re.search(r"^\s+run:\s*(?:#.*)?$", body, re.MULTILINE)),
            )
        )
    return rules


# --- imports --------------------------------------------------------------------------------
@dataclass
class Imports:
    external: dict[str, set[str]] = field(default_factory=dict)  # module -> files importing it
    optional: dict[str, set[str]] = field(
        default_factory=dict
    )  # imported in try/except ImportError
    missing_internal: set[str] = field(default_factory=set)  # rare_objects modules with no file


_IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


def _optional_imports(tree: ast.AST) -> set[int]:
    """ids of the import statements inside `try:` blocks that catch ImportError (optional)."""
    optional = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        caught = set()
        for handler in node.handlers:
            if handler.type is None:
                caught.add("BaseException")
            for name in ast.walk(handler.type) if handler.type is not None else ():
                if isinstance(name, ast.Name):
                    caught.add(name.id)
        if caught & _IMPORT_ERRORS:
            for statement in node.body:
                optional.update(
                    id(sub)
                    for sub in ast.walk(statement)
                    if isinstance(sub, (ast.Import, ast.ImportFrom))
                )
    return optional


def _module_file(package_root: Path, module: str) -> Path | None:
    """The file of `rare_objects.x.y` under package_root (the folder that holds rare_objects/)."""
    base = package_root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(package_root: Path, path: Path) -> str:
    parts = list(path.relative_to(package_root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def collect_imports(script: Path, package_root: Path, package: str = PACKAGE) -> Imports:
    """Every module imported by `script` and, transitively, by the `package` modules it imports."""
    found = Imports()
    seen: set[Path] = set()
    todo = [script]

    def follow(module: str) -> None:
        # Importing a.b.c runs a/__init__.py, a/b/__init__.py and a/b/c.py.
        parts = module.split(".")
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            path = _module_file(package_root, name)
            if path is None:
                found.missing_internal.add(name)
            elif path not in seen:
                todo.append(path)

    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        text = path.read_text()
        tree = ast.parse(text, filename=str(path))
        if path.name == "__init__.py" and ("iter_modules(__path__)" in text or "Registry(" in text):
            # A registry that imports every module of its package (rare_objects.backends.*:
            # the shared Registry imports them all when one is looked up).
            todo.extend(sorted(path.parent.glob("*.py")))
        in_package = package_root in path.parents and path != script
        current = _module_name(package_root, path) if in_package else ""
        is_package_init = path.name == "__init__.py"
        optional = _optional_imports(tree)
        for node in ast.walk(tree):
            modules: list[str] = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    # Relative import inside the package.
                    anchor = current.split(".") if current else [package]
                    if not is_package_init:
                        anchor = anchor[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)] if node.level > 1 else anchor
                    base = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                modules = [base]
                if base.split(".")[0] == package:
                    # `from rare_objects import x`: x may be a submodule.
                    modules += [
                        f"{base}.{alias.name}"
                        for alias in node.names
                        if _module_file(package_root, f"{base}.{alias.name}") is not None
                    ]
            for module in modules:
                top = module.split(".")[0]
                if top == package:
                    follow(module)
                elif top:
                    target = found.optional if id(node) in optional else found.external
                    target.setdefault(module, set()).add(str(path.relative_to(package_root.parent)))
    return found


def required_distributions(imports: Imports) -> dict[str, set[str]]:
    """Third-party distributions (normalized) -> files that import them."""
    needed: dict[str, set[str]] = {}
    for module, files in imports.external.items():
        top = module.split(".")[0]
        if top in sys.stdlib_module_names or top in NOT_PACKAGES:
            continue
        dist = IMPORT_TO_DIST.get(module) or IMPORT_TO_DIST.get(top) or top
        needed.setdefault(normalize(dist), set()).update(files)
    return needed


# --- envs/*.yaml ------------------------------------------------------------------------------
_CONDA_SPEC = re.compile(r"^(?:[\w.-]+::)?([A-Za-z0-9_.-]+)\s*(==?|>=|<=|>|<|!=|~=)?\s*([^\s#]*)")
_PIP_SPEC = re.compile(
    r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*(==|>=|<=|>|<|!=|~=|===)?\s*([^\s;#]*)"
)


@dataclass
class Package:
    name: str  # normalized distribution name
    spec: str  # as written
    operator: str | None
    version: str
    source: str  # "conda" or "pip"

    @property
    def pinned(self) -> bool:
        exact = {"conda": ("=", "=="), "pip": ("==", "===")}[self.source]
        return (
            self.operator in exact
            and bool(self.version)
            and not re.search(r"[*,|<>]", self.version)
        )


def parse_env(path: Path) -> tuple[dict, list[Package]]:
    env = yaml.safe_load(path.read_text())
    packages = []
    for dep in env.get("dependencies") or []:
        if isinstance(dep, dict):
            for spec in dep.get("pip") or []:
                match = _PIP_SPEC.match(spec.strip())
                assert match, f"{path.name}: cannot read pip requirement {spec!r}"
                packages.append(
                    Package(normalize(match.group(1)), spec, match.group(2), match.group(3), "pip")
                )
        else:
            match = _CONDA_SPEC.match(str(dep).strip())
            assert match, f"{path.name}: cannot read conda dependency {dep!r}"
            name = normalize(match.group(1))
            name = normalize(CONDA_TO_DIST.get(name, name))
            packages.append(Package(name, str(dep), match.group(2), match.group(3), "conda"))
    return env, packages


def read_requirements(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^\s;]+)", line)
        if match:
            pins[normalize(match.group(1))] = match.group(2)
    return pins


def _env_problems(rule: RuleInfo, conda: str, package_root: Path) -> list[str]:
    """What env ``conda`` lacks for ``rule``'s script."""
    problems = []
    env_path = rule.path(conda)
    if not env_path.is_file():
        return [f"rule {rule.name}: conda env {conda} does not exist"]
    _, packages = parse_env(env_path)
    provided = {package.name for package in packages}
    if not rule.script:
        return []
    script = rule.path(rule.script)
    if not script.is_file():
        return [f"rule {rule.name}: script {rule.script} does not exist"]
    imports = collect_imports(script, package_root)
    for module in sorted(imports.missing_internal):
        problems.append(f"rule {rule.name}: {script.name} imports {module}, which has no file")
    for dist, files in sorted(required_distributions(imports).items()):
        if dist not in provided:
            problems.append(
                f"rule {rule.name}: {env_path.name} lacks {dist} (imported by {', '.join(sorted(files))})"
            )
    return problems


def check_rules(rules: list[RuleInfo], package_root: Path) -> list[str]:
    """Every problem found: rules without conda:, missing files, uncovered or unpinned imports."""
    problems = []
    for rule in rules:
        if not (rule.script or rule.run):
            continue
        if not rule.conda:
            problems.append(
                f"rule {rule.name} ({rule.source.name}) has a script:/run: but no conda: directive"
            )
            continue
        for conda in rule.condas or [rule.conda]:
            problems += _env_problems(rule, conda, package_root)
    return problems


def workflow_rules() -> list[RuleInfo]:
    if not RULES_DIR.is_dir():
        pytest.skip(
            "rules/ does not exist yet: the workflow's rules are not written (this test must not stay skipped)"
        )
    rules = [rule for path in sorted(RULES_DIR.glob("*.smk")) for rule in parse_rules(path)]
    if (REPO / "Snakefile").exists():
        rules += parse_rules(REPO / "Snakefile")
    if not rules:
        pytest.skip("rules/*.smk define no rules yet (this test must not stay skipped)")
    return rules


def env_files() -> list[Path]:
    return sorted(ENVS_DIR.glob("*.yaml")) + sorted(ENVS_DIR.glob("*.yml"))


# --- the real workflow ----------------------------------------------------------------------------
def test_every_rule_env_covers_its_script_imports():
    problems = check_rules(workflow_rules(), REPO / "scripts")
    assert not problems, "\n".join(problems)


def test_every_rule_with_code_uses_an_existing_env():
    rules = [rule for rule in workflow_rules() if rule.script or rule.run]
    assert rules, "no rule with a script: or run: directive found"
    for rule in rules:
        assert rule.conda, f"rule {rule.name} has no conda: directive"
        for conda in rule.condas or [rule.conda]:
            assert rule.path(conda).parent == ENVS_DIR.resolve(), conda
            assert rule.path(conda).is_file(), conda


@pytest.mark.parametrize("path", env_files(), ids=lambda p: p.name)
def test_env_file_is_pinned_and_matches_requirements(path):
    env, packages = parse_env(path)
    assert env.get("name"), f"{path.name} has no name"
    channels = env.get("channels") or []
    assert "conda-forge" in channels and "defaults" not in channels, channels
    assert packages, f"{path.name} lists no packages"
    unpinned = [package.spec for package in packages if not package.pinned]
    assert not unpinned, f"{path.name}: not pinned to one version: {unpinned}"
    names = [package.name for package in packages]
    assert len(names) == len(set(names)), f"{path.name}: a package is listed twice: {names}"
    pins = read_requirements(ENVS_DIR / "requirements.txt")
    different = [
        f"{package.spec} (requirements.txt: {pins[package.name]})"
        for package in packages
        if package.name in pins and package.version.lstrip("=") != pins[package.name]
    ]
    assert not different, f"{path.name}: versions differ from envs/requirements.txt: {different}"
    assert any(package.name == "python" for package in packages), f"{path.name} does not pin python"


def test_there_are_env_files():
    assert {p.name for p in env_files()} >= {"vision.yaml", "analysis.yaml"}


# --- the checker itself, on a small made-up workflow ------------------------------------------------
FIXTURE_SMK = """
rule good:
    input:
        "a.txt",
    output:
        "b.txt",
    conda:
        "../envs/good.yaml"
    script:
        "../scripts/good.py"


rule inline:  # directives on one line
    output: "c.txt"
    conda: "../envs/good.yaml"
    script: "../scripts/uses_internal.py"


rule no_env:
    output:
        "d.txt",
    script:
        "../scripts/good.py"


rule runs_code:
    output:
        "e.txt",
    run:
        print("hello")


rule lacking:
    output:
        "f.txt",
    conda:
        "../envs/small.yaml"
    script:
        "../scripts/good.py"


rule shell_only:
    output:
        "g.txt",
    shell:
        "touch {output}"
"""

GOOD_ENV = """
name: good
channels: [conda-forge, nodefaults]
dependencies:
  - python=3.11
  - numpy=2.4.6
  - conda-forge::pytorch=2.14.1
  - pip=26.3
  - pip:
      - scikit-learn==1.9.1
      - scipy==1.17.1
      - pillow==13.0.0
      - open_clip_torch==3.3.0
      - pyyaml==6.0.3
"""

SMALL_ENV = """
name: small
channels: [conda-forge]
dependencies:
  - python=3.11
  - numpy>=2
  - pip:
      - pillow
"""


@pytest.fixture
def toy_repo(tmp_path) -> Path:
    (tmp_path / "rules").mkdir()
    (tmp_path / "envs").mkdir()
    package = tmp_path / "scripts" / "rare_objects"
    (package / "sub").mkdir(parents=True)
    (tmp_path / "rules" / "toy.smk").write_text(FIXTURE_SMK)
    (tmp_path / "envs" / "good.yaml").write_text(GOOD_ENV)
    (tmp_path / "envs" / "small.yaml").write_text(SMALL_ENV)
    (tmp_path / "scripts" / "good.py").write_text(
        "import os, json\nimport numpy as np\nfrom PIL import Image\nimport snakemake\n"
        "def f():\n    import sklearn.neighbors  # a late import counts too\n"
        "try:\n    import cv2  # optional: not required\nexcept ImportError:\n    cv2 = None\n"
        "try:\n    import faiss\nexcept (ValueError, ModuleNotFoundError):\n    pass\n"
        "try:\n    import scipy  # a failure other than ImportError is not caught: required\nexcept KeyError:\n    pass\n"
    )
    (tmp_path / "scripts" / "uses_internal.py").write_text(
        "from rare_objects import helpers\nfrom rare_objects.sub import deep\n"
    )
    (package / "__init__.py").write_text("import yaml\n")
    (package / "helpers.py").write_text(
        "from . import sub\nfrom .sub.deep import thing\nimport torch.nn\n"
    )
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "deep.py").write_text(
        "import open_clip\nfrom ..helpers import nothing\nfrom rare_objects import helpers\nfrom rare_objects.gone import x\nthing = 1\n"
    )
    return tmp_path


def test_parse_rules_reads_directives(toy_repo):
    rules = {rule.name: rule for rule in parse_rules(toy_repo / "rules" / "toy.smk")}
    assert set(rules) == {"good", "inline", "no_env", "runs_code", "lacking", "shell_only"}
    assert rules["good"].conda == "../envs/good.yaml"
    assert rules["good"].script == "../scripts/good.py"
    assert rules["good"].path(rules["good"].conda) == (toy_repo / "envs" / "good.yaml").resolve()
    assert (rules["inline"].conda, rules["inline"].script) == (
        "../envs/good.yaml",
        "../scripts/uses_internal.py",
    )
    assert rules["no_env"].conda is None and rules["no_env"].script
    assert rules["runs_code"].run and rules["runs_code"].script is None
    assert not (rules["shell_only"].run or rules["shell_only"].script or rules["shell_only"].conda)


def test_collect_imports_follows_the_package(toy_repo):
    scripts = toy_repo / "scripts"
    imports = collect_imports(scripts / "good.py", scripts)
    assert set(required_distributions(imports)) == {"numpy", "pillow", "scikit-learn", "scipy"}
    assert set(imports.optional) == {"cv2", "faiss"}
    internal = collect_imports(scripts / "uses_internal.py", scripts)
    assert set(required_distributions(internal)) == {"pyyaml", "torch", "open-clip-torch"}
    assert internal.missing_internal == {"rare_objects.gone"}


def test_check_rules_reports_each_problem(toy_repo):
    rules = parse_rules(toy_repo / "rules" / "toy.smk")
    problems = check_rules(rules, toy_repo / "scripts")
    text = "\n".join(problems)
    assert "rule no_env (toy.smk) has a script:/run: but no conda: directive" in text
    assert "rule runs_code (toy.smk) has a script:/run: but no conda: directive" in text
    assert "rule lacking: small.yaml lacks scikit-learn" in text
    assert "rule lacking: small.yaml lacks scipy" in text
    assert "rule inline: uses_internal.py imports rare_objects.gone, which has no file" in text
    assert not any(problem.startswith("rule good:") for problem in problems), text
    assert not any("shell_only" in problem for problem in problems), text
    assert len(problems) == 5, text


def test_pins_are_checked(toy_repo):
    _, good = parse_env(toy_repo / "envs" / "good.yaml")
    assert all(package.pinned for package in good)
    assert {package.name for package in good} >= {"torch", "pillow", "open-clip-torch", "python"}
    _, small = parse_env(toy_repo / "envs" / "small.yaml")
    assert {package.spec for package in small if not package.pinned} == {"numpy>=2", "pillow"}
