"""What `pip install` puts into site-packages: the `homecloud` package and nothing else."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_only_homecloud_is_installed_at_the_top_of_site_packages():
    """`operations`, `facts`, `lab`, `bench` are folders of the clone, not installed packages."""
    from setuptools import find_packages

    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert list(config["packages"]) == ["find"]  # no explicit list beside the find rule
    found = find_packages(str(REPO_ROOT), **config["packages"]["find"])
    assert found and {name.split(".")[0] for name in found} == {"homecloud"}
