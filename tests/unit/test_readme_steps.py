"""The README's "How a deploy works" names the steps the engine takes, in the engine's order."""

from __future__ import annotations

import re

from handover import plans
from handover.settings import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
FRONT_DOOR_STEPS = {"sync"}  # added by `fab` right after the lock
ALTERNATIVES = {"build": "image", "sync": "files"}  # what a rollback takes instead
IMAGE_SOURCES = {"pull": "pull", "local": "image"}  # what a ready-made image takes instead of the build
NOT_IN_A_ROLLBACK = {"release"}  # what a rollback leaves out (the README says so)


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def test_readme_lists_the_deploy_steps_in_order() -> None:
    listed = re.findall(r"^\d+\. \*\*([a-z ]+)\*\*", section("How a deploy works"), re.MULTILINE)
    engine = [s.name for s in plans.deploy()]
    assert [name for name in listed if name not in FRONT_DOOR_STEPS] == engine
    assert listed.index("sync") == engine.index("lock") + 1
    rollback = [s.name for s in plans.deploy(build=False)]
    assert [ALTERNATIVES["build"] if name == "build" else name for name in engine
            if name not in NOT_IN_A_ROLLBACK] == rollback
    text = section("How a deploy works")
    for name, instead in ALTERNATIVES.items():
        assert f"**{instead}** instead" in text, f"the README does not say what a rollback takes instead of {name}"
    for source, instead in IMAGE_SOURCES.items():
        ready_made = [s.name for s in plans.deploy(source=source)]
        assert [instead if name == "build" else name for name in engine] == ready_made
        assert f"**{instead}** instead" in text, f"the README does not say that a {source} image takes {instead}"
    assert "**ship** instead" in text, "the README does not say that `fab` with app_ship takes ship"
    flat = " ".join(text.split())
    for name in NOT_IN_A_ROLLBACK:
        assert f"A rollback runs no {name}" in flat, f"the README does not say that a rollback skips {name}"


def test_readme_lists_the_first_start() -> None:
    text = " ".join(section("How a deploy works").split())
    match = re.search(r"\*\*first start\*\*: ([^.]*)", text)
    assert match, "the README does not describe the first start"
    listed = [part.strip() for part in re.sub(r"\s*\([^)]*\)", "", match.group(1)).split(",")]
    engine = [s.name for s in plans.first_start()]
    assert [name for name in listed if name not in FRONT_DOOR_STEPS] == engine
