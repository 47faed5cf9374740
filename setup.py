from setuptools import setup

setup(
    name="twin",
    version="0.1.0",
    description="Build a digital twin of a person (voice dataset + style and memory LoRA adapters) "
                "from public material, with consent and provenance.",
    packages=["twin", "stages"],
    py_modules=["cli"],
    python_requires=">=3.11",
    install_requires=[
        "click>=8.1", "pydantic>=2.6", "pyyaml>=6.0", "rich>=13.0", "requests",
        "yt-dlp>=2025.1.1", "feedparser>=6.0", "trafilatura>=2.0", "soundfile>=0.12", "numpy",
    ],
    entry_points={"console_scripts": ["twin=cli:main"]},
)
