"""`immsync init`: a valid, commented manifest written from ImmPort's listing."""

from __future__ import annotations

from pathlib import Path

from conftest import World

from immsync.errors import ExitCode
from immsync.init import StudyOverview, TopEntry, render_manifest
from immsync.manifest import load_manifest
from immsync.testing.sampledata import write_file


def init(world: World, *args: str) -> Path:
    result = world.run("init", *args)
    assert result.exit_code == 0, result.output
    target = world.root / "manifest.yaml"
    target.write_text(result.stdout)
    return target


def uncomment_paths(text: str) -> str:
    """What a user does to narrow a whole study: uncomment 'paths:' and its entries."""
    return text.replace("    # paths:\n", "    paths:\n").replace("    #   - ", "      - ")


class TestInit:
    def test_whole_studies_with_their_top_level_named(self, world: World):
        """init SDY1 SDY269 gives a valid manifest taking both studies whole, naming their parts."""
        target = init(world, "SDY1", "SDY269")
        manifest = load_manifest(target)
        assert [(s.accession, s.paths) for s in manifest.studies] == [("SDY1", ()), ("SDY269", ())]
        assert manifest.destination == world.root / "data"
        text = target.read_text()
        assert "# SDY1: 3 top-level entries" in text and "data release DR47" in text
        for name in ("ResultFiles", "StudyFiles", "SDY1-DR47_Tab.zip"):
            assert f"    #   - {name}" in text
        narrowed = uncomment_paths(text)
        target.write_text(narrowed)
        assert load_manifest(target).studies[0].paths == (
            "ResultFiles", "SDY1-DR47_Tab.zip", "StudyFiles"
        )

    def test_results_only_takes_each_result_folder(self, world: World):
        """--results-only: each study's paths is its ResultFiles folder; plan fetches only those."""
        target = init(world, "SDY1", "sdy269", "SDY1", "--results-only")
        manifest = load_manifest(target)
        assert [(s.accession, s.paths) for s in manifest.studies] == [
            ("SDY1", ("ResultFiles",)), ("SDY269", ("ResultFiles",))
        ]
        assert "      # - StudyFiles" in target.read_text()
        plan = world.run("plan", str(target), "--json").json()
        paths = [a["path"] for a in plan["actions"]]
        assert paths and all(p.split("/")[1] == "ResultFiles" for p in paths)

    def test_destination_option(self, world: World):
        """--destination sets the manifest's destination."""
        target = init(world, "SDY269", "--destination", "/srv/immport mirror")
        assert load_manifest(target).destination == Path("/srv/immport mirror")

    def test_a_study_without_results(self, world: World):
        """--results-only on a study with no ResultFiles folder: exit 4 with a hint."""
        write_file(world.remote, "SDY5/StudyFiles/protocol.txt", "x")
        result = world.run("init", "SDY5", "--results-only")
        assert result.exit_code == ExitCode.REMOTE
        assert "SDY5 has no ResultFiles folder on ImmPort" in result.stderr
        assert "leave out --results-only" in result.stderr

    def test_unknown_and_malformed_accessions(self, world: World):
        """A study ImmPort lacks is exit 4; something that is not an accession is exit 2."""
        missing = world.run("init", "SDY404")
        assert missing.exit_code == ExitCode.REMOTE
        assert "SDY404: not found on ImmPort" in missing.stderr
        bad = world.run("init", "SDY1", "study-one")
        assert bad.exit_code == ExitCode.USAGE
        assert "'study-one' is not a study accession" in bad.stderr


class TestRender:
    def test_awkward_names_are_quoted_so_the_manifest_stays_valid(self, tmp_path: Path):
        """Names YAML would misread (numbers, yes, '#', ': ') are quoted, commented or not."""
        entries = tuple(
            TopEntry(name, folder=True, size=2048)
            for name in ("2017", "yes", "a: b", "#hash", "*star", "plain_name.txt", "é")
        )
        text = render_manifest([StudyOverview("SDY7", entries, "DR3")], destination="my data")
        target = tmp_path / "m.yaml"
        target.write_text(text)
        assert load_manifest(target).studies[0].paths == ()
        target.write_text(uncomment_paths(text))
        assert load_manifest(target).studies[0].paths == tuple(e.name for e in entries)
        assert "plain_name.txt  # folder, 2.0 KiB" in text
