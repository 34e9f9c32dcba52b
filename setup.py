"""Only what pyproject.toml cannot say: the wheel carries the shipped spaces and device profiles.

They live at the repository's top level (spaces/, device_profiles/); the build copies them into the package
(search/config/shipped/), where `search.config.shipped` finds them by name in an installed hwsearch.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = ("spaces", "device_profiles")


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads the repository's folders themselves
            return
        for folder in SHIPPED:
            dest = Path(self.build_lib) / "search" / "config" / "shipped" / folder
            dest.mkdir(parents=True, exist_ok=True)
            for f in sorted(Path(folder).glob("*.yaml")):
                shutil.copyfile(f, dest / f.name)


setup(cmdclass={"build_py": BuildPy})
