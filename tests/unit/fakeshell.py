"""In-process answers to the plain file commands the engine sends the fake host, instead of a real ``sh``.

Starting ``/bin/sh`` costs milliseconds, and a deploy on :class:`~tests.unit.fakehost.FakeHost`
sends dozens of file commands (``mkdir -p``, ``chmod``, ``readlink``, the socket link scripts, the
release log append, the lock's holder file...). :func:`answer` does the same work with Python's
``os`` calls, for the exact command lines the engine builds, and only where the outcome is certain:

* every precondition is checked before anything changes (paths exist and have the expected types,
  modes are octal, names need no shell quoting, the collation is the C one...), and any doubt
  (a path in the way, an unusual name, a failure whose message the real tool would word) answers
  ``None``: the fake host then runs the command with the real ``sh`` as before;
* a script is recognised only by its whole text (the helpers' own f-strings are re-built from the
  parsed parts and compared), so a changed script in the engine simply falls back to ``sh``.

tests/unit/test_fakehost.py runs every form here through both paths on identical trees, in the
ordinary and the odd states, and requires the same output, exit status and files.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import os
import pwd
import re
import shlex
import shutil
import stat
from collections.abc import Callable, Mapping

Answer = tuple[str, str, int]  # stdout, stderr, exit status
OK: Answer = ("", "", 0)

C_LOCALES = ("", "C", "POSIX", "C.UTF-8", "C.utf8")
_OCTAL = re.compile(r"[0-7]{1,4}")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_READ = re.compile(r"if \[ -f (.+) \]; then cat (.+); else exit 3; fi")
_WRITE = re.compile(r"umask 077 && printf '%s' (\S+) \| base64 -d > (.+) && chmod (\S+) (.+) && mv -f (.+) (.+)")

LINKS = ('cd "$1" 2>/dev/null || exit 0; '
         'for f in live-*.sock; do [ -L "$f" ] && echo "$f $(readlink "$f")"; done; :')
LINKS_AND_TARGETS = ('(' + LINKS + '); printf "%s\\n" "--- targets"; '
                     'if [ -f "$2" ]; then cat -- "$2" || exit 5; fi')
CHECK = 'cd "$1" && shift && for s; do [ -S "$s" ] || echo "$s"; done'
UNLINK = 'cd "$1" 2>/dev/null || exit 0; rm -f -- prev-*.sock'
FORGET = 'cd "$1" && shift && rm -f -- "$@"'
FINGERPRINT = ('find "$@" -maxdepth 1 \\( -name "*.conf" -o -name "*.main" -o -name "*.js" \\) -type f '
               '-print0 2>/dev/null | sort -z | xargs -0 cat')
FINGERPRINTED = ("*.conf", "*.main", "*.js")
LOADED_AND_FINGERPRINT = 'printf "%s\\n" "$(cat -- "$1" 2>/dev/null | head -n 1)"; shift; ' + FINGERPRINT
READ_LINK = 'readlink -- "$1" || :'
TLS_LOOK = ('d=$1 m=$2 live=$3 want=$4; shift 4; mkdir -p -- "$d" && chmod "$m" "$d" && cd -- "$d" || exit 1; '
            'cur=$(readlink -- "$live" 2>/dev/null); printf "%s\\n" "$cur"; '
            'for f in *.pem; do [ -f "$f" ] && [ ! -L "$f" ] || continue; '
            '[ "$f" = "$want" ] || [ "$f" = "$cur" ] || rm -f -- "$f"; done; '
            'for f; do if [ -f "$f" ]; then printf "+"; base64 < "$f" | tr -d "\\n"; echo; else echo -; fi; done')
APPEND = ('mkdir -p -- "$3" || exit 1; '
          'if [ -s "$2" ] && [ -n "$(tail -c 1 "$2")" ]; then printf "\\n%s\\n" "$1" >> "$2"; '
          'else printf "%s\\n" "$1" >> "$2"; fi')
RELEASE = 'if grep -qF "$2" "$1/holder.json" 2>/dev/null; then rm -rf "$1"; fi'
HALF_MADE = 'test -d "$1" && ! test -e "$1/$2"'


_WORD = r"(?:[^\s'\"\\]|'[^']*')+"
_JOINED = re.compile(f"{_WORD}(?: {_WORD})*")
_WORDS = re.compile(_WORD)
_PIECE = re.compile(r"'([^']*)'|([^']+)")


def split(line: str) -> list[str]:
    """``shlex.split(line)``, fast for the lines ``shlex.join`` makes (plain words and '...' quotes)."""
    if not _JOINED.fullmatch(line):
        return shlex.split(line)
    return ["".join(quoted or plain for quoted, plain in _PIECE.findall(word)) for word in _WORDS.findall(line)]


def answer(argv: list[str], line: str, cwd: str, env: Mapping[str, str]) -> Answer | None:
    """The outcome of ``line`` run by ``sh -c`` in ``cwd``, done here; None: run the real ``sh``."""
    if not argv or shlex.join(argv) != line:  # only lines quoted as handover.shell quotes them
        return None
    if argv[:2] == ["sh", "-c"] and len(argv) >= 3:
        return _script(argv[2], argv[3:], cwd, env)
    handler = _COMMANDS.get(argv[0])
    if handler is None or (argv[0] == "ls" and not _collation_is_bytes(env)):
        return None
    return handler(argv[1:], cwd)


# -- helpers -------------------------------------------------------------------------------------------
def _path(cwd: str, path: str) -> str:
    return os.path.join(cwd, path)


def _plain(path: str) -> bool:
    """A path the tools take as it is: not empty, no option look, no ``.``/``..``/empty component."""
    if not path or path.startswith("-") or "\n" in path or "\\" in path:
        return False
    parts = path.split("/")
    return all(part not in ("", ".", "..") for part in parts[1 if path.startswith("/") else 0:])


def _real_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.path.islink(path)


def _mode(text: str) -> int | None:
    return int(text, 8) if _OCTAL.fullmatch(text) else None


def _text(data: bytes) -> str | None:
    """What ``subprocess.run(text=True)`` makes of ``data``, when it is plain UTF-8 without CR."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return None
    return None if "\r" in text else text


def _collation_is_bytes(env: Mapping[str, str]) -> bool:
    for name in ("LC_ALL", "LC_COLLATE", "LANG"):
        value = env.get(name, "")
        if value:
            return value in C_LOCALES
    return True


def _umask() -> int:
    """This process's umask (read, not set: other threads may be making files)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o777  # unknown: no answer here


def _bytes(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def _remove(path: str) -> None:
    if _real_dir(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


# -- plain commands ------------------------------------------------------------------------------------
def _mkdir(args: list[str], cwd: str) -> Answer | None:
    parents = args[:1] == ["-p"]
    args = args[1:] if parents else args
    mode = None
    if parents and args[:1] == ["-m"] and len(args) >= 2:
        mode = _mode(args[1])
        if mode is None:
            return None
        args = args[2:]
    if not args or not all(_plain(a) for a in args) or len(set(args)) != len(args):
        return None
    if parents and _umask() & 0o300:
        return None  # GNU mkdir -p gives parents u+wx whatever the umask; os.makedirs does not
    paths = [_path(cwd, a) for a in args]
    for path in paths:
        if parents:
            probe = path
            while probe not in ("", "/"):  # every existing ancestor (or the path) must be a directory
                if os.path.lexists(probe) and not os.path.isdir(probe):
                    return None
                probe = os.path.dirname(probe)
        elif os.path.lexists(path) or not os.path.isdir(os.path.dirname(path) or "."):
            return None
    for path in paths:
        if parents and os.path.isdir(path):
            continue  # mkdir -p -m leaves an existing directory's mode alone
        if parents and os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        os.mkdir(path)
        if mode is not None:
            os.chmod(path, mode)
    return OK


def _chmod(args: list[str], cwd: str) -> Answer | None:
    if len(args) < 2 or not all(_plain(a) for a in args[1:]):
        return None
    mode = _mode(args[0])
    paths = [_path(cwd, a) for a in args[1:]]
    if mode is None or not all(os.path.exists(p) for p in paths):
        return None
    if any(os.path.isdir(p) and os.stat(p).st_mode & (stat.S_ISUID | stat.S_ISGID) for p in paths):
        return None  # GNU chmod keeps a directory's set-id bits: leave that rule to it
    for path in paths:
        os.chmod(path, mode)
    return OK


def _readlink(args: list[str], cwd: str) -> Answer | None:
    if len(args) != 1 or not _plain(args[0]) or not os.path.islink(path := _path(cwd, args[0])):
        return None
    target = os.readlink(path)
    return None if "\n" in target else (target + "\n", "", 0)


def _test(args: list[str], cwd: str) -> Answer | None:
    if len(args) != 2 or args[0] != "-d" or not _plain(args[1]):
        return None
    return "", "", 0 if os.path.isdir(_path(cwd, args[1])) else 1


def _rm(args: list[str], cwd: str) -> Answer | None:
    if args[:1] != ["-rf"] or not all(_plain(a) for a in args[1:]):
        return None
    for arg in args[1:]:
        _remove(_path(cwd, arg))
    return OK


def _stat(args: list[str], cwd: str) -> Answer | None:
    if len(args) != 3 or args[0] != "-c" or args[1] not in ("%Y", "%U") or not _plain(args[2]):
        return None
    path = _path(cwd, args[2])
    if not os.path.lexists(path):
        return None
    info = os.lstat(path)
    if args[1] == "%Y":
        return f"{int(info.st_mtime)}\n", "", 0
    try:
        return pwd.getpwuid(info.st_uid).pw_name + "\n", "", 0
    except KeyError:
        return None


def _mv(args: list[str], cwd: str) -> Answer | None:
    if len(args) != 3 or args[0] != "-T" or not _plain(args[1]) or not _plain(args[2]):
        return None
    source, target = _path(cwd, args[1]), _path(cwd, args[2])
    if not os.path.lexists(source) or _real_dir(source):
        return None
    if os.path.lexists(target) and (_real_dir(target) or (
            os.lstat(source).st_ino, os.lstat(source).st_dev) == (os.lstat(target).st_ino, os.lstat(target).st_dev)):
        return None
    os.rename(source, target)
    return OK


def _ln(args: list[str], cwd: str) -> Answer | None:
    if len(args) != 3 or args[0] != "-sfn" or not _plain(args[1]) or not _plain(args[2]):
        return None
    link = _path(cwd, args[2])
    if _real_dir(link) or not os.path.isdir(os.path.dirname(link) or "."):
        return None
    _relink(args[1], link)
    return OK


def _relink(target: str, link: str) -> None:
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(target, link)


def _ls(args: list[str], cwd: str) -> Answer | None:
    if len(args) != 2 or args[0] != "-1A" or not _plain(args[1]) or not _real_dir(directory := _path(cwd, args[1])):
        return None
    names = sorted(os.listdir(directory), key=os.fsencode)
    if any("\n" in n or not n.isprintable() for n in names):
        return None
    return "".join(n + "\n" for n in names), "", 0


_COMMANDS: dict[str, Callable[[list[str], str], Answer | None]] = {
    "mkdir": _mkdir, "chmod": _chmod, "readlink": _readlink, "test": _test, "rm": _rm, "stat": _stat,
    "mv": _mv, "ln": _ln, "ls": _ls,
}


# -- the engine's scripts ------------------------------------------------------------------------------
def _script(script: str, words: list[str], cwd: str, env: Mapping[str, str]) -> Answer | None:
    """``sh -c script [name [args...]]``: ``words`` are the name ($0) and the arguments."""
    fixed = _SCRIPTS.get(script)
    if fixed is not None and words:
        return fixed(words[1:], cwd, env)
    if script.startswith('cd "$1" && ln -sfn ') and words:
        return _point(script, words[1:], cwd)
    if (match := _READ.fullmatch(script)) and not words:
        return _read(script, match, cwd)
    if (match := _WRITE.fullmatch(script)) and not words:
        return _write(script, match, cwd)
    return None


def _one_word(quoted: str) -> str | None:
    try:
        words = split(quoted)
    except ValueError:
        return None
    return words[0] if len(words) == 1 else None


def _read(script: str, match: re.Match[str], cwd: str) -> Answer | None:
    path = _one_word(match[1])
    if path is None or not _plain(path) or script != (
            f"if [ -f {shlex.quote(path)} ]; then cat {shlex.quote(path)}; else exit 3; fi"):
        return None
    full = _path(cwd, path)
    if not os.path.isfile(full):
        return "", "", 3
    text = _text(_bytes(full))
    return None if text is None else (text, "", 0)


def _write(script: str, match: re.Match[str], cwd: str) -> Answer | None:
    encoded, path, mode_text = _one_word(match[1]), _one_word(match[6]), match[3]
    if encoded is None or path is None or not _plain(path):
        return None
    tmp = f"{path}.tmp"
    rebuilt = (f"umask 077 && printf '%s' {shlex.quote(encoded)} | base64 -d > {shlex.quote(tmp)}"
               f" && chmod {shlex.quote(mode_text)} {shlex.quote(tmp)} && mv -f {shlex.quote(tmp)} {shlex.quote(path)}")
    mode = _mode(mode_text)
    if script != rebuilt or mode is None:
        return None
    try:
        content = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    full, full_tmp = _path(cwd, path), _path(cwd, tmp)
    if not os.path.isdir(os.path.dirname(full) or ".") or os.path.isdir(full) or (
            os.path.lexists(full_tmp) and (os.path.islink(full_tmp) or not os.path.isfile(full_tmp))):
        return None
    fd = os.open(full_tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, content)
    finally:
        os.close(fd)
    os.chmod(full_tmp, mode)
    os.rename(full_tmp, full)
    return OK


def _point(script: str, args: list[str], cwd: str) -> Answer | None:
    steps = script.removeprefix('cd "$1" && ').split(" && ")
    if len(args) != 1 or not _plain(args[0]) or len(steps) % 2:
        return None
    directory = _path(cwd, args[0])
    pairs = []
    for ln, mv in zip(steps[::2], steps[1::2], strict=True):
        words = ln.split(" ")
        if len(words) != 4 or words[:2] != ["ln", "-sfn"] or not _PLAIN_NAME.fullmatch(words[2]):
            return None
        link = words[3].removeprefix(".").removesuffix(".tmp")
        if not _PLAIN_NAME.fullmatch(link) or ln != f"ln -sfn {words[2]} .{link}.tmp" \
                or mv != f"mv -fT .{link}.tmp {link}":
            return None
        pairs.append((words[2], link))
    if not os.path.isdir(directory):
        return None
    for _, link in pairs:
        if _real_dir(os.path.join(directory, f".{link}.tmp")) or _real_dir(os.path.join(directory, link)):
            return None
    for target, link in pairs:
        tmp = os.path.join(directory, f".{link}.tmp")
        _relink(target, tmp)
        os.rename(tmp, os.path.join(directory, link))
    return OK


def _links(args: list[str], cwd: str, env: Mapping[str, str]) -> Answer | None:
    if len(args) != 1 or not _collation_is_bytes(env):
        return None
    directory = _path(cwd, args[0])
    if not os.path.isdir(directory):
        return OK
    out = []
    for name in sorted(os.listdir(directory), key=os.fsencode):
        path = os.path.join(directory, name)
        if fnmatch.fnmatchcase(name, "live-*.sock") and os.path.islink(path):
            target = os.readlink(path)
            if "\\" in name + target or "\n" in target:
                return None  # dash's echo reads backslashes
            out.append(f"{name} {target}\n")
    return "".join(out), "", 0


def _links_and_targets(args: list[str], cwd: str, env: Mapping[str, str]) -> Answer | None:
    if len(args) != 2 or not _plain(args[1]):
        return None
    links = _links(args[:1], cwd, env)
    target = _path(cwd, args[1])
    if links is None or os.path.islink(target):
        return None
    text = _text(_bytes(target)) if os.path.isfile(target) else ""
    return None if text is None else (f"{links[0]}--- targets\n{text}", "", 0)


def _check(args: list[str], cwd: str, env: Mapping[str, str]) -> Answer | None:
    if not args or not os.path.isdir(directory := _path(cwd, args[0])):
        return None
    out = []
    for name in args[1:]:
        if not name or name.startswith("-") or "\\" in name or "\n" in name:
            return None
        try:
            is_socket = stat.S_ISSOCK(os.stat(os.path.join(directory, name)).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            is_socket = False
        if not is_socket:
            out.append(name + "\n")
    return "".join(out), "", 0


def _unlink(args: list[str], cwd: str, env: Mapping[str, str]) -> Answer | None:
    if len(args) != 1:
        return None
    directory = _path(cwd, args[0])
    if not os.path.isdir(directory):
        return OK
    found = [os.path.join(directory, n) for n in os.listdir(directory) if fnmatch.fnmatchcase(n, "prev-*.sock")]
    if any(_real_dir(p) for p in found):
        return None
    for path in found:
        os.unlink(path)
    return OK


def _forget(args: list[str], cwd: str, env: Mapping[str, str]) -> Answer | None:
    if not args or not os.path.isdir(directory := _path(cwd, args[0])):
        return None
    paths = [os.path.join(directory, n) for n in args[1:]]
    if not all(_plain(n) for n in args[1:]) or any(_real_dir(p) for p in paths):
        return None
    for path in paths:
        if os.path.lexists(path):
            os.unlink(path)
    return OK


def _fingerprint(args: list[str], cwd: str, env: Mapping[str, str]) -> Answer | None:
    if not args or not all(_plain(a) for a in args) or not _collation_is_bytes(env):
        return None
    found = []
    for arg in args:
        directory = _path(cwd, arg)
        if not os.path.lexists(directory):
            continue  # find's complaint goes to /dev/null; the other directories are still read
        if not _real_dir(directory):
            return None  # a symlink it does not follow, or a file
        found += [f"{arg}/{name}" for name in os.listdir(directory)
                  if any(fnmatch.fnmatchcase(name, pattern) for pattern in FINGERPRINTED)
                  and stat.S_ISREG(os.lstat(os.path.join(directory, name)).st_mode)]
    data = b"".join(_bytes(_path(cwd, p)) for p in sorted(found, key=os.fsencode))
    text = _text(data)
    return None if text is None else (text, "", 0)


def _loaded_and_fingerprint(args: list[str], cwd: str, env: Mapping[str, str]) -> Answer | None:
    if not args or not _plain(args[0]):
        return None
    loaded = _path(cwd, args[0])
    if os.path.lexists(loaded) and not (os.path.isfile(loaded) and not os.path.islink(loaded)):
        return None  # a directory, a link: what cat makes of it is left to the real shell
    first = ""
    if os.path.isfile(loaded):
        text = _text(_bytes(loaded))
        if text is None or "\0" in text:
            return None
        first = text.split("\n", 1)[0].rstrip("\n")
    files = _fingerprint(args[1:], cwd, env)
    return None if files is None else (f"{first}\n{files[0]}", "", 0)


def _read_link(args: list[str], cwd: str, env: Mapping[str, str]) -> Answer | None:
    if len(args) != 1 or not _plain(args[0]):
        return None
    path = _path(cwd, args[0])
    if not os.path.islink(path):
        return "", "", 0  # readlink prints nothing for what is not a link; `|| :` makes it success
    target = os.readlink(path)
    return (None if "\n" in target else (target + "\n", "", 0))


def _name(word: str) -> bool:
    return _plain(word) and "/" not in word


def _tls_look(args: list[str], cwd: str, env: Mapping[str, str]) -> Answer | None:
    if len(args) < 4 or not _plain(args[0]) or _mode(args[1]) is None or not _name(args[2]):
        return None
    if not all(_name(a) for a in args[4:]) or (args[3] and not _name(args[3])):
        return None
    directory = _path(cwd, args[0])
    if os.path.lexists(directory) and not _real_dir(directory):
        return None  # a file in the way (mkdir's words) or a symlink cd would follow
    link = os.path.join(directory, args[2])
    current = os.readlink(link) if os.path.islink(link) else ""
    if "\n" in current or _text(os.fsencode(current)) is None:
        return None
    if _mkdir(["-p", args[0]], cwd) is None:
        return None
    os.chmod(directory, _mode(args[1]) or 0)
    for name in os.listdir(directory):
        full = os.path.join(directory, name)
        if (fnmatch.fnmatchcase(name, "*.pem") and not name.startswith(".") and not os.path.islink(full)
                and os.path.isfile(full) and name not in (args[3], current)):
            os.remove(full)
    out = [current]
    for name in args[4:]:
        full = os.path.join(directory, name)
        out.append("+" + base64.b64encode(_bytes(full)).decode() if os.path.isfile(full) else "-")
    return "\n".join(out) + "\n", "", 0


def _append(args: list[str], cwd: str, env: Mapping[str, str]) -> Answer | None:
    if len(args) != 3 or not _plain(args[1]) or not _plain(args[2]):
        return None
    made = _mkdir(["-p", args[2]], cwd)  # the state directory first, as the script does
    if made is None or made[2] != 0:
        return None
    path = _path(cwd, args[1])
    if not os.path.isdir(os.path.dirname(path) or ".") or (os.path.lexists(path) and not os.path.isfile(path)):
        return None
    data = os.fsencode(args[0]) + b"\n"
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
        if last == b"\0":
            return None
        if last != b"\n":
            data = b"\n" + data
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return OK


def _release(args: list[str], cwd: str, env: Mapping[str, str]) -> Answer | None:
    if len(args) != 2 or not _plain(args[0]) or not args[1] or args[1].startswith("-") or "\n" in args[1]:
        return None
    lock = _path(cwd, args[0])
    holder = os.path.join(lock, "holder.json")
    if os.path.isfile(holder):
        content = _bytes(holder)
        try:
            content.decode()
        except UnicodeDecodeError:
            return None  # grep's view of bytes that are not UTF-8
        if os.fsencode(args[1]) in content:
            _remove(lock)
    return OK


def _half_made(args: list[str], cwd: str, env: Mapping[str, str]) -> Answer | None:
    if len(args) != 2 or not _plain(args[0]):
        return None
    directory = _path(cwd, args[0])
    made = os.path.isdir(directory) and not os.path.exists(os.path.join(directory, args[1]))
    return "", "", 0 if made else 1


_SCRIPTS: dict[str, Callable[[list[str], str, Mapping[str, str]], Answer | None]] = {
    LINKS: _links, CHECK: _check, UNLINK: _unlink, FORGET: _forget, FINGERPRINT: _fingerprint,
    READ_LINK: _read_link, TLS_LOOK: _tls_look, LOADED_AND_FINGERPRINT: _loaded_and_fingerprint,
    LINKS_AND_TARGETS: _links_and_targets,
    APPEND: _append, RELEASE: _release, HALF_MADE: _half_made,
}
