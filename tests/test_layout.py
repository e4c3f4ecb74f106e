"""The layout's promises: no import cycle among the project's modules (train.py and evaluate.py share
checkpoint.py instead of importing each other), and model.py knows nothing of adapters."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def project_modules():
    """{module name: path} of every .py file of the project outside tests/ (dev/ scripts included)."""
    modules = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("tests", "out", "build", "__pycache__")]
        for name in files:
            if name.endswith(".py") and name != "setup.py":
                rel = os.path.relpath(os.path.join(folder, name), ROOT)[:-3].replace(os.sep, ".")
                modules[rel.removesuffix(".__init__")] = os.path.join(folder, name)
    return modules


def imports(path, modules):
    """The project modules a file imports, at any depth of the file (imports inside functions count)."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {n for n in names if n in modules}
    return found


def test_no_import_cycle():
    modules = project_modules()
    graph = {m: imports(p, modules) - {m} for m, p in modules.items()}
    assert "checkpoint" in graph and "train" in graph, sorted(graph)  # the walk found the project
    state = {}  # module -> "visiting" | "done"

    def visit(m, path):
        state[m] = "visiting"
        for n in sorted(graph[m]):
            assert state.get(n) != "visiting", "import cycle: " + " -> ".join(path + [m, n])
            if n not in state:
                visit(n, path + [m])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_model_knows_nothing_of_adapters():
    modules = project_modules()
    assert imports(modules["model"], modules) == set()
