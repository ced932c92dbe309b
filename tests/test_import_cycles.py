"""The import-cycle check that `make lint` runs (issue 12)."""

import textwrap

from tests.tools import import_cycles


def write(root, files):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_it_reports_a_cycle_through_a_function_local_import(tmp_path):
    write(
        tmp_path,
        {
            "app/__init__.py": "",
            "app/a.py": "from app import b\n",
            "app/b.py": "def f():\n    from .a import x\n",
            "app/c.py": "import app.a\n",
        },
    )

    assert import_cycles.main([str(tmp_path)]) == 1
    assert import_cycles.report(tmp_path) == [
        "cycle of 2: app.a, app.b\n  app/a.py:1: app.a -> app.b\n  app/b.py:2: app.b -> app.a"
    ]


def test_it_counts_a_package_reexport_as_an_edge_from_the_package(tmp_path):
    write(
        tmp_path,
        {
            "app/__init__.py": "",
            "app/services/__init__.py": "from .chat import chat\n",
            "app/services/chat.py": "from app.services import other\n",
        },
    )

    assert import_cycles.report(tmp_path) == [
        "cycle of 2: app.services, app.services.chat\n"
        "  app/services/__init__.py:1: app.services -> app.services.chat\n"
        "  app/services/chat.py:1: app.services.chat -> app.services"
    ]


def test_it_ignores_imports_under_type_checking_and_outside_the_project(tmp_path):
    write(
        tmp_path,
        {
            "app/__init__.py": "",
            "app/a.py": "import os\nimport app.b\n",
            "app/b.py": "import typing\nif typing.TYPE_CHECKING:\n    from app.a import A\n",
            "scratch/loose.py": "import app.a\n",
        },
    )

    assert import_cycles.main([str(tmp_path)]) == 0
    assert import_cycles.report(tmp_path) == []


def test_it_merges_modules_into_packages_with_a_depth(tmp_path):
    write(
        tmp_path,
        {
            "one/__init__.py": "",
            "one/a.py": "import two.b\n",
            "two/__init__.py": "",
            "two/b.py": "",
            "two/c.py": "from one import a\n",
        },
    )

    assert import_cycles.report(tmp_path) == []
    assert import_cycles.report(tmp_path, depth=1) == [
        "cycle of 2: one, two\n  one/a.py:1: one.a -> two.b\n  two/c.py:1: two.c -> one.a"
    ]
