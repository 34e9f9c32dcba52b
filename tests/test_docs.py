"""The docs: README short and pointing at pages that exist; the pages build as a site with no broken link."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO


def test_readme_is_short_and_its_links_resolve():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    links = re.findall(r"\]\(([^)#]+)\)", text)
    assert links and all((REPO / link).is_file() for link in links), [ln for ln in links if not (REPO / ln).is_file()]
    assert "make demo" in text and "make test" in text


def test_the_docs_build_strictly(tmp_path):
    # mkdocs.yml sets strict and turns every link, anchor and nav check into a warning: any one fails the build.
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "site" / "results" / "index.html").is_file()


def test_a_broken_link_fails_the_build(tmp_path):
    import shutil

    shutil.copytree(REPO / "docs", tmp_path / "docs")
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    with (tmp_path / "docs" / "guide.md").open("a") as f:
        f.write("\nSee [the missing page](no-such-page.md).\n")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "no-such-page.md" in r.stderr
