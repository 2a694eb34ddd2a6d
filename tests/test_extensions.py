"""Extensions: loading from their folders, enable/disable kept in config.json, failures listed while the rest loads,
A1111 extensions never run, installs from zip files, folders and git repositories (local ones: no network), and
nothing managed while the server is exposed."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from modules.app import App, StartOptions
from modules.extensions import ExtensionAccessError, GenerationRequest
from modules.extensions import install as installing
from modules.extensions.gitinfo import read_git_info
from modules.extensions.install import InstallError
from modules.scripts.registry import ScriptCall

HELLO = """
from modules.extensions import Control, ExtensionAPI, Option, Script, ScriptOutput
from .helpers import SUFFIX  # the extension's own modules import relatively


class Echo(Script):
    title = "Hello echo"

    def controls(self, kind):
        return [Control("Times", "number", 1)]


def setup(api: ExtensionAPI) -> None:
    api.add_script(Echo())
    api.add_option(Option("hello_suffix", SUFFIX, "Suffix", "ignored", "str"))
    api.on_before_generation(lambda req: req.replace(prompt=req.prompt + api.setting("hello_suffix")))
    api.on_after_generation(lambda req, output: None)
"""


def write_extension(root: Path, name: str, main: str, manifest: str | None = None,
                    files: dict[str, str] | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    text = manifest if manifest is not None else f'name = "{name}"\nversion = "0.3"\nrequirements = ["numpy"]\n'
    (folder / "extension.toml").write_text(text, encoding="utf-8")
    (folder / "main.py").write_text(textwrap.dedent(main), encoding="utf-8")
    for file, content in (files or {}).items():
        (folder / file).write_text(textwrap.dedent(content), encoding="utf-8")
    return folder


def make_app(data_dir: Path, **options) -> App:
    return App(StartOptions(data_dir=data_dir, device="cpu", skip_load_model=True, **options))


def states(app: App) -> dict[str, str]:
    return {e.name: app.extensions.status(e) for e in app.extensions.scan()}


@pytest.fixture
def ext_dir(data_dir) -> Path:
    return data_dir / "extensions"


def test_an_enabled_extension_adds_its_script_setting_and_hooks(data_dir, ext_dir):
    write_extension(ext_dir, "hello", HELLO, files={"helpers.py": 'SUFFIX = ", hello"\n'})
    app = make_app(data_dir)
    assert states(app)["hello"] == "loaded"
    assert states(app)["example"] == "disabled"  # shipped, off until enabled
    assert app.scripts.find("hello echo", "txt2img") is not None
    assert [o.key for o in app.settings.sections()["hello"]] == ["hello_suffix"]  # its own section
    assert app.settings["hello_suffix"] == ", hello"

    job = app.generation_job(GenerationRequest(prompt="a cat"))
    assert job.alwayson == (ScriptCall("hello hooks"),)  # every job carries the hooks
    hooks = app.scripts.script(job.alwayson[0], "txt2img")
    assert hooks.before(job.request, ()).prompt == "a cat, hello"
    given = app.generation_job(GenerationRequest(), alwayson=(ScriptCall("hello hooks"),))
    assert given.alwayson == (ScriptCall("hello hooks"),)  # once
    entry = next(e for e in app.extensions.a1111_list() if e["name"] == "hello")
    assert entry == {"name": "hello", "remote": "", "branch": "", "commit_hash": "", "version": "0.3",
                     "commit_date": "", "enabled": True}


def test_enable_and_disable_are_kept_in_config_json(data_dir, ext_dir):
    write_extension(ext_dir, "hello", HELLO, files={"helpers.py": 'SUFFIX = ""\n'})
    app = make_app(data_dir)
    app.extensions.set_enabled("hello", False)
    app.extensions.set_enabled("example", True)
    saved = json.loads((data_dir / "config.json").read_text())
    assert saved["disabled_extensions"] == ["hello"] and saved["enabled_extensions"] == ["example"]
    assert states(app) == {"hello": "loaded; disabled from the next start",
                           "example": "enabled; loads at the next start"}

    again = make_app(data_dir)
    assert states(again) == {"hello": "disabled", "example": "loaded"}
    assert again.scripts.find("hello echo", "txt2img") is None
    assert again.scripts.find("example seed sweep", "txt2img") is not None

    again.extensions.set_enabled("hello", True)
    again.extensions.set_disable_all("extra")  # only the shipped ones
    assert states(make_app(data_dir)) == {"hello": "off (Disable all extensions: extra)", "example": "loaded"}
    again.extensions.set_disable_all("none")
    assert states(make_app(data_dir, disable_extensions="all")) == {
        "hello": "off (--disable-all-extensions)", "example": "off (--disable-all-extensions)"}


BROKEN = {
    "bad_import": "import no_such_module_here\n",
    "bad_setup": """
        from modules.extensions import Script

        class Half(Script):
            title = "Half done"

        def setup(api):
            api.add_script(Half())
            raise RuntimeError("setup went wrong")
        """,
    "no_setup": "VALUE = 1\n",
    "taken_title": """
        from modules.extensions import Script

        class Same(Script):
            title = "Hello echo"

        def setup(api):
            api.add_script(Same())
        """,
}


def test_failed_extensions_are_listed_with_their_error_and_the_rest_loads(data_dir, ext_dir, caplog):
    for name, main in BROKEN.items():
        write_extension(ext_dir, name, main)
    write_extension(ext_dir, "hello", HELLO, files={"helpers.py": 'SUFFIX = ""\n'})
    write_extension(ext_dir, "bad_toml", "", manifest="name = [unclosed\n")
    (data_dir / "config.json").write_text(json.dumps({"enabled_extensions": ["example"]}))
    with caplog.at_level(logging.ERROR):
        app = make_app(data_dir)
    found = states(app)
    assert found["bad_import"] == "failed: ModuleNotFoundError: No module named 'no_such_module_here'"
    assert found["bad_setup"] == "failed: RuntimeError: setup went wrong"
    assert found["no_setup"] == "failed: TypeError: main.py has no setup(api) function"
    assert found["taken_title"] == "failed: ValueError: a script titled 'Hello echo' already exists"
    assert found["bad_toml"].startswith("invalid: extension.toml is not valid TOML")
    assert found["hello"] == "loaded" and found["example"] == "loaded"
    assert app.scripts.find("half done", "txt2img") is None  # what a failed setup added is dropped
    assert "Traceback" in caplog.text and "setup went wrong" in caplog.text  # the traceback goes to the log
    assert not any("Traceback" in s for s in found.values())
    assert not [m for m in sys.modules if m.startswith("sdwebui_extension_bad")]


A1111_SCRIPT = """
import modules.scripts as scripts
import gradio as gr
open({marker!r}, "w").write("ran")
"""


def a1111_extension(root: Path, marker: Path) -> Path:
    folder = root / "sd-webui-thing"
    (folder / "scripts").mkdir(parents=True)
    (folder / "scripts" / "thing.py").write_text(A1111_SCRIPT.format(marker=str(marker)))
    for name in ("install.py", "preload.py", "__init__.py"):
        (folder / name).write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return folder


def test_an_a1111_extension_is_listed_not_compatible_and_never_run(data_dir, ext_dir, tmp_path):
    marker = tmp_path / "marker"
    folder = a1111_extension(ext_dir, marker)
    app = make_app(data_dir)
    assert states(app)["sd-webui-thing"] == "A1111 extension (not compatible): never run"
    with pytest.raises(Exception, match="cannot be enabled"):
        app.extensions.set_enabled("sd-webui-thing", True)
    elsewhere = shutil.copytree(folder, tmp_path / "copy")
    with pytest.raises(InstallError, match="A1111 extension"):
        app.extensions.install(str(elsewhere))
    assert not marker.exists()


def make_zip(path: Path, entries: dict[str, str], links: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in entries.items():
            zf.writestr(name, text)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
    return path


GOOD = {"zipped-main/extension.toml": 'name = "zipped"\nversion = "2.0"\nrequirements = ["pillow>=10", "nope-pkg"]\n',
        "zipped-main/main.py": "def setup(api):\n    pass\n"}


@pytest.mark.parametrize("entry", ["../evil.txt", "zipped-main/../../evil.txt", "/tmp/evil.txt", "..\\evil.txt",
                                   "C:/evil.txt", "link"])
def test_a_zip_with_an_unsafe_entry_is_refused_whole(data_dir, ext_dir, tmp_path, entry):
    app = make_app(data_dir)
    if entry == "link":
        archive = make_zip(tmp_path / "x.zip", GOOD, links=("zipped-main/link",))
    else:
        archive = make_zip(tmp_path / "x.zip", {**GOOD, entry: "evil"})
    with pytest.raises(InstallError, match="nothing was installed"):
        app.extensions.install(str(archive))
    assert not (data_dir / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not ext_dir.exists() or list(ext_dir.iterdir()) == []  # no staging folder left


def test_a_zip_installs_after_showing_what_it_declares(data_dir, ext_dir, tmp_path, monkeypatch):
    app = make_app(data_dir)
    archive = make_zip(tmp_path / "zipped-main.zip", GOOD)
    staged = app.extensions.stage(str(archive))
    assert staged.manifest.requirements == ("pillow>=10", "nope-pkg")
    ext = app.extensions.install_staged(staged.token)
    assert ext.path == ext_dir / "zipped" and (ext.path / "main.py").is_file()
    assert states(app)["zipped"] == "enabled; loads at the next start"
    assert [p.name for p in ext_dir.iterdir()] == ["zipped"]
    with pytest.raises(InstallError, match="already installed"):
        app.extensions.install(str(archive))
    assert states(make_app(data_dir))["zipped"] == "loaded"

    monkeypatch.setattr(installing, "MAX_TOTAL_BYTES", 1000)
    big = make_zip(tmp_path / "big.zip", {**GOOD, "zipped-main/data.bin": "0" * 5000})
    with pytest.raises(InstallError, match="more than"):
        app.extensions.install(str(big), name="other")
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(InstallError, match="not a readable zip"):
        app.extensions.install(str(tmp_path / "junk.zip"))


def _git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args], cwd=cwd,
                          env=env, check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_install_from_a_local_repository_and_its_version(data_dir, ext_dir, tmp_path):
    work = write_extension(tmp_path, "gitext", "def setup(api):\n    pass\n")
    _git("init", "-q", "-b", "trunk", cwd=work)
    _git("add", ".", cwd=work)
    _git("commit", "-q", "-m", "first", cwd=work)
    sha, date = _git("rev-parse", "HEAD", cwd=work), _git("log", "-1", "--format=%ct", cwd=work)
    bare = tmp_path / "gitext.git"
    _git("clone", "-q", "--bare", str(work), str(bare), cwd=tmp_path)
    info = read_git_info(work)  # loose objects
    assert info is not None and (info.branch, info.commit_hash, info.commit_date) == ("trunk", sha, int(date))

    app = make_app(data_dir)
    ext = app.extensions.install(bare.as_uri())  # file://: cloned through a pack
    entry = next(e for e in app.extensions.a1111_list() if e["name"] == ext.name)
    assert entry == {"name": "gitext", "remote": bare.as_uri(), "branch": "trunk", "commit_hash": sha,
                     "version": sha[:8], "commit_date": date, "enabled": True}
    assert ext.version == sha[:8]
    app.extensions.install(str(bare), name="gitext2")  # a bare repository's path
    with pytest.raises(InstallError, match="git clone failed"):
        app.extensions.install((tmp_path / "missing.git").as_uri())
    with pytest.raises(InstallError, match="not a git URL"):
        app.extensions.install("ext::sh -c touch% /tmp/x")
    assert sorted(p.name for p in ext_dir.iterdir()) == ["gitext", "gitext2"]


def test_nothing_is_installed_or_toggled_while_exposed_without_the_flag(data_dir, ext_dir, tmp_path):
    write_extension(ext_dir, "hello", HELLO, files={"helpers.py": 'SUFFIX = ""\n'})
    archive = make_zip(tmp_path / "zipped-main.zip", GOOD)
    exposed = make_app(data_dir, exposed=True)
    assert "--enable-insecure-extension-access" in (exposed.extensions.management_refusal() or "")
    for action in (lambda: exposed.extensions.set_enabled("hello", False),
                   lambda: exposed.extensions.set_disable_all("all"),
                   lambda: exposed.extensions.install(str(archive))):
        with pytest.raises(ExtensionAccessError):
            action()
    assert not (data_dir / "config.json").exists() and sorted(p.name for p in ext_dir.iterdir()) == ["hello"]
    assert states(exposed)["hello"] == "loaded"  # enabled extensions still run

    allowed = make_app(data_dir, exposed=True, extension_access=True)
    allowed.extensions.set_enabled("hello", False)
    assert allowed.extensions.install(str(archive)).name == "zipped"
