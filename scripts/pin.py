"""Writes the hashes into the pinned Python environments.

    python3 scripts/pin.py scripts/requirements-demo.in scripts/requirements.in

Each NAME.in holds lines `package==version` (an environment marker may follow
`;`), every package the environment needs, dependencies included, and `-r
FILE` lines; NAME.txt gets the same lines, each with the sha256 of every file
the index serves for that version that a Linux machine could install (the
sdist, pure wheels, and Linux wheels).  pip then installs exactly those files
or refuses.  Upgrading a package is a deliberate commit: change its version
in the .in file, run this, run `make test`, commit both files.
"""
import configparser
import json
import os
import re
import sys
import urllib.request

PIN = re.compile(r"^([A-Za-z0-9._-]+)==([A-Za-z0-9.+!-]+)\s*(;.*)?$")


def index_url():
    """pip's index: PIP_INDEX_URL, else pip.conf's index-url, else PyPI."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"].rstrip("/")
    conf = configparser.ConfigParser()
    conf.read(["/etc/pip.conf", os.path.expanduser("~/.config/pip/pip.conf")])
    return conf.get("global", "index-url", fallback="https://pypi.org/simple").rstrip("/")


def linux_installable(filename):
    if filename.endswith(".tar.gz") or filename.endswith(".zip"):
        return True
    if not filename.endswith(".whl"):
        return False
    platform = filename[:-4].split("-")[-1]
    return platform == "any" or "linux" in platform


def file_version(filename):
    """The version in a wheel's or an sdist's file name."""
    if filename.endswith(".whl"):
        return filename.split("-")[1]
    for ext in (".tar.gz", ".zip"):
        if filename.endswith(ext):
            return filename[: -len(ext)].rsplit("-", 1)[-1]
    return None


def hashes(index, name, version):
    normal = re.sub(r"[-_.]+", "-", name).lower()
    req = urllib.request.Request(f"{index}/{normal}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        files = json.load(r)["files"]
    found = [f["hashes"]["sha256"] for f in files
             if file_version(f["filename"]) == version and linux_installable(f["filename"])
             and "sha256" in f.get("hashes", {})]
    if not found:
        sys.exit(f"pin.py: the index serves no Linux file of {name}=={version}")
    return sorted(set(found))


def lock(path, index):
    out = [f"# Written by scripts/pin.py from {os.path.basename(path)}: edit that file, not this one.\n"]
    for line in open(path):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-r "):
            out.append(line.replace(".in", ".txt") + "\n")
            continue
        m = PIN.match(line)
        if not m:
            sys.exit(f"pin.py: {path}: not NAME==VERSION: {line}")
        name, version, marker = m.group(1), m.group(2), m.group(3) or ""
        out.append(f"{name}=={version}{' ' + marker if marker else ''} \\\n")
        hs = hashes(index, name, version)
        out.append(" \\\n".join(f"    --hash=sha256:{h}" for h in hs) + "\n")
    with open(path[: -len(".in")] + ".txt", "w") as f:
        f.writelines(out)


def main():
    index = index_url()
    for path in sys.argv[1:]:
        if not path.endswith(".in"):
            sys.exit(f"pin.py: {path}: expected a .in file")
        lock(path, index)


if __name__ == "__main__":
    main()
