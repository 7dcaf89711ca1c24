"""Nothing inside ``<destination>/.immsync`` is followed, whoever planted it.

Each test plants what a careless script or another user on shared storage could plant
(a link at the lock, the staging folder, a study's staging folder, the scratch folder,
the state file or its journal, the shards folder) and checks, end to end, that the run
refuses with exit 7 naming the path, and that nothing outside the destination changed.
The cross-user cases run for real as another user where the tests run as root, and
elsewhere with a folder of root's bound into the destination in a private namespace.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import World
from private_mounts import OTHER_USER, PrivateMounts

from immsync.errors import ExitCode, StateError
from immsync.statedir import open_private_file, private_folder, remove_files_below

DESIGN = "SDY1/StudyFiles/Study_design.txt"
STUDY_FILES = "  - accession: SDY1\n    paths:\n      - StudyFiles\n"
NOBODY = 65534


def victim_folder(tmp_path: Path) -> Path:
    """A folder outside the destination holding files someone cares about."""
    folder = tmp_path / "victim"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    old = time.time() - 7 * 86400  # old enough for every age-based clean-up
    (folder / "ascp-pairs-old.txt").write_text("not ours")
    os.utime(folder / "ascp-pairs-old.txt", (old, old))
    return folder


def contents(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def refused(result: object, path: Path, what: str) -> None:
    output = result.output  # type: ignore[attr-defined]
    assert result.exit_code == ExitCode.LOCAL, output  # type: ignore[attr-defined]
    assert "Traceback" not in output
    assert f"refusing to use {path}: it {what}" in output


class TestLinksInTheStateFolder:
    def test_a_linked_lock_file_is_neither_truncated_nor_written(
        self, world: World, tmp_path: Path
    ) -> None:
        victim = tmp_path / "victim.txt"
        victim.write_text("precious")
        (world.dest / ".immsync").mkdir(parents=True)
        (world.dest / ".immsync" / "lock").symlink_to(victim)
        world.write_manifest(STUDY_FILES)
        result = world.apply()
        refused(result, world.dest / ".immsync" / "lock", "is a symbolic link")
        assert victim.read_text() == "precious"
        assert world.local_files() == []

    def test_a_dangling_lock_link_does_not_create_its_target(
        self, world: World, tmp_path: Path
    ) -> None:
        target = tmp_path / "created-by-immsync"
        (world.dest / ".immsync").mkdir(parents=True)
        (world.dest / ".immsync" / "lock").symlink_to(target)
        world.write_manifest(STUDY_FILES)
        result = world.apply()
        refused(result, world.dest / ".immsync" / "lock", "is a symbolic link")
        assert not target.exists() and not target.is_symlink()

    def test_a_linked_staging_folder_is_not_emptied(self, world: World, tmp_path: Path) -> None:
        victim = victim_folder(tmp_path)
        before = contents(victim)
        world.write_manifest(STUDY_FILES)
        assert world.apply().exit_code == 0  # a first run creates the state folder
        staging = world.dest / ".immsync" / "staging"
        if staging.exists():
            staging.rmdir()
        staging.symlink_to(victim)
        (world.remote / DESIGN).write_text("changed upstream")  # something to fetch
        result = world.apply()
        refused(result, staging, "is a symbolic link")
        assert contents(victim) == before

    def test_a_linked_scratch_folder_is_not_emptied(self, world: World, tmp_path: Path) -> None:
        victim = victim_folder(tmp_path)
        before = contents(victim)
        (world.dest / ".immsync").mkdir(parents=True)
        (world.dest / ".immsync" / "tmp").symlink_to(victim)
        world.write_manifest(STUDY_FILES)
        result = world.apply()
        refused(result, world.dest / ".immsync" / "tmp", "is a symbolic link")
        assert contents(victim) == before

    @pytest.mark.parametrize("transport", ["https", "ascp"])
    def test_a_linked_study_staging_folder_receives_nothing(
        self, world: World, tmp_path: Path, transport: str
    ) -> None:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        staging = world.dest / ".immsync" / "staging"
        staging.mkdir(parents=True)
        (staging / "SDY1").symlink_to(elsewhere)
        world.write_manifest(STUDY_FILES)
        result = world.apply("--transport", transport)
        refused(result, staging / "SDY1", "is a symbolic link")
        assert list(elsewhere.iterdir()) == []
        assert world.local_files() == []

    def test_the_state_folder_itself_as_a_link_is_refused(
        self, world: World, tmp_path: Path
    ) -> None:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        world.dest.mkdir()
        (world.dest / ".immsync").symlink_to(elsewhere)
        world.write_manifest(STUDY_FILES)
        for command in (("apply",), ("status",), ("plan",)):
            result = world.run(command[0], str(world.manifest_path))
            refused(result, world.dest / ".immsync", "is a symbolic link")
        assert list(elsewhere.iterdir()) == []

    @pytest.mark.parametrize("name", ["state.sqlite", "state.sqlite-journal", "state.sqlite-wal"])
    def test_a_linked_state_file_or_journal_is_never_opened(
        self, world: World, tmp_path: Path, name: str
    ) -> None:
        victim = tmp_path / "victim.db"
        victim.write_bytes(b"")
        (world.dest / ".immsync").mkdir(parents=True)
        (world.dest / ".immsync" / name).symlink_to(victim)
        world.write_manifest(STUDY_FILES)
        result = world.apply()
        refused(result, world.dest / ".immsync" / name, "is a symbolic link")
        assert victim.read_bytes() == b""

    def test_a_linked_shards_folder_is_not_merged_or_deleted(
        self, world: World, tmp_path: Path
    ) -> None:
        victim = tmp_path / "victim"
        (victim / "1-of-2" / "staging").mkdir(parents=True)
        (victim / "1-of-2" / "state.sqlite").write_text("not a state")
        (victim / "1-of-2" / "staging" / "data.bin").write_text("precious")
        before = contents(victim)
        (world.dest / ".immsync").mkdir(parents=True)
        (world.dest / ".immsync" / "shards").symlink_to(victim)
        world.write_manifest(STUDY_FILES)
        result = world.apply()
        refused(result, world.dest / ".immsync" / "shards", "is a symbolic link")
        assert contents(victim) == before

    def test_a_fifo_at_the_lock_is_refused_without_hanging(self, world: World) -> None:
        (world.dest / ".immsync").mkdir(parents=True)
        os.mkfifo(world.dest / ".immsync" / "lock")
        world.write_manifest(STUDY_FILES)
        result = world.apply()
        refused(result, world.dest / ".immsync" / "lock", "is not a regular file")


class TestPermissions:
    def test_created_folders_are_private(self, world: World) -> None:
        world.write_manifest(STUDY_FILES)
        assert world.apply().exit_code == 0
        for folder in (world.dest / ".immsync", world.dest / ".immsync" / "staging"):
            if folder.exists():
                assert stat.S_IMODE(folder.stat().st_mode) & 0o077 == 0, folder

    def test_a_group_writable_state_folder_in_a_private_destination_is_refused(
        self, world: World
    ) -> None:
        world.dest.mkdir(mode=0o755)
        os.chmod(world.dest, 0o755)
        (world.dest / ".immsync").mkdir()
        os.chmod(world.dest / ".immsync", 0o777)
        world.write_manifest(STUDY_FILES)
        result = world.apply()
        refused(
            result,
            world.dest / ".immsync",
            "is writable by group or others while the destination is not",
        )
        assert "chmod go-w" in result.output

    def test_shared_lab_storage_may_be_group_writable(self, world: World) -> None:
        """A group-writable destination may hold a group-writable state folder."""
        world.dest.mkdir()
        os.chmod(world.dest, 0o2775)
        (world.dest / ".immsync").mkdir()
        os.chmod(world.dest / ".immsync", 0o2775)
        world.write_manifest(STUDY_FILES)
        result = world.apply()
        assert result.exit_code == 0, result.output
        assert DESIGN in world.local_files()


def as_other_user(folder: Path, action: Callable[[int], None], uid: int = NOBODY) -> None:
    """Run ``action(folder_fd)`` in a forked child that has become user *uid* (root only).

    The folder is opened before the switch: pytest's own temporary folders above it are
    private to root, as a user's home would be, so the other user acts relative to it.
    """
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's exit status carries the result
        code = 1
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            os.setgid(uid)
            os.setuid(uid)
            action(fd)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the other user's action failed"


@pytest.mark.skipif(os.geteuid() != 0, reason="planting files as another user needs root")
class TestAnotherUserOnSharedStorage:
    def test_links_planted_by_another_user_are_refused(self, world: World, tmp_path: Path) -> None:
        """A lab member makes .immsync in a shared destination and plants a lock link;
        a later run by root neither truncates the victim nor uses the folder."""
        victim = tmp_path / "victim.txt"
        victim.write_text("root's precious file")
        world.dest.mkdir()
        os.chmod(world.dest, 0o1777)  # shared storage: anyone may create here

        def plant(dest_fd: int) -> None:
            os.mkdir(".immsync", 0o777, dir_fd=dest_fd)
            state_fd = os.open(".immsync", os.O_RDONLY | os.O_DIRECTORY, dir_fd=dest_fd)
            os.symlink(victim, "lock", dir_fd=state_fd)

        as_other_user(world.dest, plant)
        assert (world.dest / ".immsync").stat().st_uid == NOBODY
        world.write_manifest(STUDY_FILES)
        result = world.apply()
        refused(
            result,
            world.dest / ".immsync",
            f"belongs to user id {NOBODY}, not to you (user id 0)",
        )
        assert victim.read_text() == "root's precious file"

    def test_another_users_study_staging_folder_is_refused(
        self, world: World, tmp_path: Path
    ) -> None:
        world.dest.mkdir()
        os.chmod(world.dest, 0o2777)
        staging = world.dest / ".immsync" / "staging"
        staging.mkdir(parents=True)
        os.chmod(world.dest / ".immsync", 0o2777)
        os.chmod(staging, 0o2777)
        as_other_user(staging, lambda fd: os.mkdir("SDY1", 0o777, dir_fd=fd))
        world.write_manifest(STUDY_FILES)
        result = world.apply("--transport", "https")
        refused(result, staging / "SDY1", f"belongs to user id {NOBODY}")
        assert world.local_files() == []


def a_folder_of_roots() -> Path:
    """A small folder root owns that others may not write in, such as /mnt."""
    for candidate in ("/var/empty", "/mnt", "/srv", "/media", "/opt"):
        folder = Path(candidate)
        st = os.lstat(folder) if os.path.lexists(folder) else None
        if st and stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and not st.st_mode & 0o022:
            return folder
    pytest.skip("no small folder of root's found to stand for another user's")


class TestAnotherUsersFolderWithoutRoot:
    """The cases above where the tests are not root: another user's folder is one of
    root's, bound into the destination in a private mount namespace (tests/private_mounts.py),
    where it belongs to the overflow user id and the run's user is user id 0. This user can
    plant nothing in root's folder, so what is pinned is the refusal, before any use."""

    def test_another_users_state_folder_is_refused(
        self, world: World, private_mounts: PrivateMounts
    ) -> None:
        world.dest.mkdir()
        os.chmod(world.dest, 0o1777)  # shared storage: anyone may create here
        (world.dest / ".immsync").mkdir()
        private_mounts.mount("--rbind", str(a_folder_of_roots()), str(world.dest / ".immsync"))
        seen = private_mounts.seen_world(world)
        assert (seen.dest / ".immsync").stat().st_uid == 0  # root's, seen from outside
        world.write_manifest(STUDY_FILES)
        result = private_mounts.apply(world)
        refused(
            result,
            world.dest / ".immsync",
            f"belongs to user id {OTHER_USER}, not to you (user id 0)",
        )
        assert seen.local_files() == []
        assert seen.sessions() == []

    def test_another_users_study_staging_folder_is_refused(
        self, world: World, private_mounts: PrivateMounts
    ) -> None:
        world.dest.mkdir()
        os.chmod(world.dest, 0o2777)
        staging = world.dest / ".immsync" / "staging"
        staging.mkdir(parents=True)
        os.chmod(world.dest / ".immsync", 0o2777)
        os.chmod(staging, 0o2777)
        (staging / "SDY1").mkdir()
        private_mounts.mount("--rbind", str(a_folder_of_roots()), str(staging / "SDY1"))
        world.write_manifest(STUDY_FILES)
        result = private_mounts.apply(world, "--transport", "https")
        refused(result, staging / "SDY1", f"belongs to user id {OTHER_USER}")
        assert private_mounts.seen_world(world).local_files() == []


class TestTheHelpers:
    """The same rules without a run, including for users who are not root."""

    @pytest.mark.skipif(os.geteuid() == 0, reason="root owns the folder: it is not another's")
    def test_a_folder_of_roots_is_refused_to_another_user(self) -> None:
        """Where the tests are not root, a folder of root's such as /mnt (outside any
        .immsync, so checked alone) is refused, naming its owner: the same check as for a state
        folder of another user's, which this user cannot make without root."""
        roots = a_folder_of_roots()
        expected = f"belongs to user id 0, not to you \\(user id {os.geteuid()}\\)"
        with pytest.raises(StateError, match=expected):
            private_folder(roots, create=False)

    def test_private_folder_makes_each_level_0700(self, tmp_path: Path) -> None:
        folder = tmp_path / "dest" / ".immsync" / "shards" / "1-of-2"
        (tmp_path / "dest").mkdir()
        assert private_folder(folder)
        for level in (folder, folder.parent, folder.parent.parent):
            assert stat.S_IMODE(os.lstat(level).st_mode) & 0o077 == 0

    def test_private_folder_without_create_reports_absence(self, tmp_path: Path) -> None:
        assert private_folder(tmp_path / ".immsync" / "staging", create=False) is False
        assert not (tmp_path / ".immsync").exists()

    def test_a_link_in_the_middle_is_refused(self, tmp_path: Path) -> None:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (tmp_path / ".immsync").mkdir()
        (tmp_path / ".immsync" / "staging").symlink_to(elsewhere)
        with pytest.raises(StateError, match="staging: it is a symbolic link"):
            private_folder(tmp_path / ".immsync" / "staging" / "SDY1")
        assert list(elsewhere.iterdir()) == []

    def test_open_private_file_never_follows(self, tmp_path: Path) -> None:
        (tmp_path / "target").write_text("x")
        (tmp_path / "link").symlink_to(tmp_path / "target")
        with pytest.raises(StateError, match="is a symbolic link"):
            open_private_file(tmp_path / "link", os.O_RDWR | os.O_CREAT)
        (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
        with pytest.raises(StateError, match="is a symbolic link"):
            open_private_file(tmp_path / "dangling", os.O_RDWR | os.O_CREAT)
        assert not (tmp_path / "nowhere").exists()

    def test_removal_never_reaches_through_a_link(self, tmp_path: Path) -> None:
        victim = victim_folder(tmp_path)
        before = contents(victim)
        staging = tmp_path / "dest" / ".immsync" / "staging"
        (staging / "SDY1").mkdir(parents=True)
        (staging / "SDY1" / "leftover.partial").write_text("ours")
        (staging / "SDY1" / "kept.partial").write_text("resume me")
        (staging / "SDY1" / "escape").symlink_to(victim)
        (staging / "SDY1" / "escape-file").symlink_to(victim / "thesis.tex")
        remove_files_below(staging, keep=lambda rel: rel.startswith("SDY1/kept"))
        assert contents(victim) == before
        assert sorted(p.name for p in (staging / "SDY1").iterdir()) == ["kept.partial"]
