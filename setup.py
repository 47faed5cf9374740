import os

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPy(build_py):
    """A wheel carries the repository's cli.py as twin/cli.py (stages/ is mapped to twin/stages by
    package_dir): nothing is installed under a generic top-level name such as ``stages`` or ``cli``.
    A checkout and an editable install find both beside the package (twin/__init__.py)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):    # an editable install reads cli.py where it is
            return
        self.mkpath(os.path.join(self.build_lib, "twin"))
        self.copy_file("cli.py", os.path.join(self.build_lib, "twin", "cli.py"))


setup(
    name="twin",
    version="0.1.0",
    description="Build a digital twin of a person (voice dataset + style and memory LoRA adapters) "
                "from public material, with consent and provenance.",
    packages=["twin", "twin.stages"],
    package_dir={"twin.stages": "stages"},
    python_requires=">=3.11",
    install_requires=[
        "click>=8.1", "pydantic>=2.6", "pyyaml>=6.0", "rich>=13.0", "requests",
        "yt-dlp>=2025.1.1", "feedparser>=6.0", "trafilatura>=2.0", "soundfile>=0.12", "numpy",
        "charset-normalizer>=3.3",
    ],
    entry_points={"console_scripts": ["twin=twin.cli:main"]},
    cmdclass={"build_py": BuildPy},
)
