"""Test modules share only through conftest.py and helper modules: a fixture imported from another test module
is defined again in the importer (a module-scoped one then runs once for each), and the importer's tests break
whenever the other module's are rewritten."""

import ast

from tests.conftest import ROOT


def _imported_modules(tree: ast.Module) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return found


def test_no_test_module_imports_another():
    imports = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        for module in _imported_modules(ast.parse(path.read_text())):
            parts = module.split(".")
            if parts[0] == "tests" and any(part.startswith("test_") for part in parts[1:]):
                imports.append(f"{path.relative_to(ROOT)}: {module}")
    assert not imports, "move what they share into conftest.py or a helper module:\n" + "\n".join(imports)
