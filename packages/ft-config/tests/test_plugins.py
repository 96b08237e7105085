"""Plugin discovery (ft_config.plugins), against distributions installed in a temporary folder."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from ft_config import PluginError, PluginWarning, plugins

GROUP = "ft.widgets"


def install(folder: Path, dist: str, entry_points: dict[str, str], group: str = GROUP) -> None:
    """A distribution named `dist` in `folder` (a .dist-info folder), declaring `entry_points`."""
    dist_info = folder / f"{dist.replace('-', '_')}-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n", encoding="utf-8"
    )
    lines = [f"[{group}]", *(f"{name} = {target}" for name, target in entry_points.items())]
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(autouse=True)
def fresh_discovery(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(plugins.NO_PLUGINS_ENV, raising=False)
    plugins.use_plugins(None)
    yield
    plugins.use_plugins(None)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder on sys.path with ft's own `ft-widgets` (round, square) and a third party's
    `acme-widgets` (star and a broken one)."""
    (tmp_path / "ft_widgets_fake.py").write_text(
        "def round():\n    return 'ft round'\n\ndef square():\n    return 'ft square'\n",
        encoding="utf-8",
    )
    (tmp_path / "acme_widgets_fake.py").write_text(
        "def star():\n    return 'acme star'\n\ndef round():\n    return 'acme round'\n",
        encoding="utf-8",
    )
    install(
        tmp_path,
        "ft-widgets",
        {"round": "ft_widgets_fake:round", "square": "ft_widgets_fake:square"},
    )
    install(
        tmp_path,
        "acme-widgets",
        {
            "star": "acme_widgets_fake:star",
            "broken": "acme_no_such_module:widget",
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for module in ("ft_widgets_fake", "acme_widgets_fake"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    plugins.cache_clear()
    return tmp_path


def test_discover_lists_names_without_importing(site: Path) -> None:
    found = plugins.discover(GROUP)
    assert list(found) == ["broken", "round", "square", "star"]
    assert plugins.distribution(found["star"]) == "acme-widgets"
    assert plugins.is_builtin(found["square"]) and not plugins.is_builtin(found["star"])
    assert "acme_widgets_fake" not in sys.modules and "ft_widgets_fake" not in sys.modules
    assert plugins.discover("ft.no-such-group") == {}


def test_load_imports_one_plugin(site: Path) -> None:
    star = plugins.load(GROUP, "star")
    assert star() == "acme star"
    assert "ft_widgets_fake" not in sys.modules
    assert plugins.load(GROUP, "round")() == "ft round"


def test_a_broken_plugin_warns_and_fails_alone(site: Path) -> None:
    with (
        pytest.warns(PluginWarning) as warned,
        pytest.raises(PluginError, match="'broken'") as raised,
    ):
        plugins.load(GROUP, "broken")
    message = str(warned.pop(PluginWarning).message)
    assert message.startswith(
        "ft.widgets plugin 'broken' (acme_no_such_module:widget, from distribution acme-widgets) "
        "failed to load: ModuleNotFoundError: No module named 'acme_no_such_module'"
    )
    assert message.endswith("; reinstall or uninstall acme-widgets")
    assert str(raised.value) == message
    assert (raised.value.group, raised.value.name) == (GROUP, "broken")
    assert isinstance(raised.value.__cause__, ModuleNotFoundError)
    assert plugins.load(GROUP, "star")() == "acme star"  # the others keep working


def test_an_unknown_name_lists_the_installed_ones(site: Path) -> None:
    with pytest.raises(
        PluginError, match=r"no ft.widgets plugin named 'circle' \(installed: broken, round, "
    ):
        plugins.load(GROUP, "circle")


def test_load_all_skips_a_broken_plugin(site: Path) -> None:
    with pytest.warns(PluginWarning, match="'broken' .* failed to load"):
        loaded = plugins.load_all(GROUP)
    assert {name: widget() for name, widget in loaded.items()} == {
        "round": "ft round",
        "square": "ft square",
        "star": "acme star",
    }


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_the_off_switch_keeps_to_fts_own(
    site: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    assert "star" in plugins.discover(GROUP)
    monkeypatch.setenv("FT_NO_PLUGINS", value)
    assert not plugins.plugins_enabled()
    assert list(plugins.discover(GROUP)) == ["round", "square"]  # no cache_clear needed
    assert plugins.load_all(GROUP)["round"]() == "ft round"
    with pytest.raises(PluginError, match=r"named 'star' \(installed: round, square\)"):
        plugins.load(GROUP, "star")
    plugins.use_plugins(True)  # in code, over the environment
    assert "star" in plugins.discover(GROUP)


def test_use_plugins_false_keeps_to_fts_own(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FT_NO_PLUGINS", "0")
    assert plugins.plugins_enabled()
    plugins.use_plugins(False)
    assert list(plugins.discover(GROUP)) == ["round", "square"]


@pytest.mark.filterwarnings("ignore::ft_config.PluginWarning")
def test_discovery_is_cached_per_group(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = metadata.entry_points

    def counting(**selection: str) -> metadata.EntryPoints:
        calls.append(selection["group"])
        return real(**selection)

    monkeypatch.setattr(metadata, "entry_points", counting)
    first = plugins.discover(GROUP)
    plugins.discover(GROUP)
    plugins.load(GROUP, "star")
    plugins.load_all(GROUP)
    plugins.discover("ft.gadgets")
    assert calls == [GROUP, "ft.gadgets"]
    first.clear()  # callers get their own copy
    assert "star" in plugins.discover(GROUP)

    install(site, "late-widgets", {"late": "acme_widgets_fake:star"})
    assert "late" not in plugins.discover(GROUP)
    plugins.cache_clear()
    assert "late" in plugins.discover(GROUP)
    assert calls == [GROUP, "ft.gadgets", GROUP]


def test_hand_made_entry_points_count_as_third_party(monkeypatch: pytest.MonkeyPatch) -> None:
    point = metadata.EntryPoint("json", "json:dumps", GROUP)
    monkeypatch.setattr(metadata, "entry_points", lambda group: [point] if group == GROUP else [])
    plugins.cache_clear()
    assert plugins.distribution(point) is None
    assert plugins.load(GROUP, "json")({"a": 1}) == '{"a": 1}'
    plugins.use_plugins(False)
    assert plugins.discover(GROUP) == {}


def test_fts_own_keep_their_names(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    later = site / "later"  # after `site` on sys.path: its plugins come second
    later.mkdir()
    install(later, "zeta-widgets", {"round": "acme_widgets_fake:round", "star": "zeta:star"})
    monkeypatch.setattr(sys, "path", [*sys.path, str(later)])
    with pytest.warns(PluginWarning) as warned:
        found = plugins.discover(GROUP)
    assert found["round"].value == "ft_widgets_fake:round"
    assert plugins.load(GROUP, "round")() == "ft round"
    assert found["star"].value == "acme_widgets_fake:star"  # the first one on sys.path
    assert sorted(str(warning.message) for warning in warned) == [
        "ft.widgets plugin 'round' (acme_widgets_fake:round, from distribution zeta-widgets) "
        "ignored: the name is taken by ft_widgets_fake:round from distribution ft-widgets",
        "ft.widgets plugin 'star' (zeta:star, from distribution zeta-widgets) "
        "ignored: the name is taken by acme_widgets_fake:star from distribution acme-widgets",
    ]
