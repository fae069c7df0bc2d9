"""The package's own text speaks for itself: no module cites the project's issue tracker ("issue 24"), whose
numbers mean nothing to a reader of an installed package (docs/architecture.md, "The layers, and why")."""

import re
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "vae_deploy"
ISSUE_NUMBER = re.compile(r"\bissue\s*#?\d+", re.IGNORECASE)


def test_no_module_of_the_package_cites_an_issue_number():
    cited = [f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
             for path in sorted(PACKAGE.rglob("*.py"))
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if ISSUE_NUMBER.search(line)]
    assert cited == []
