"""Packaging for vtom, driven by settings.ini (nbdev 2 layout, without pkg_resources)."""
from configparser import ConfigParser
from packaging.version import Version
import setuptools

config = ConfigParser(delimiters=["="])
config.read("settings.ini", encoding="utf-8")
cfg = config["DEFAULT"]
assert Version(cfg["version"]), "settings.ini: version is not a valid version string"

def _reqs(key: str) -> list[str]:
    return cfg.get(key, "").split()

licenses = {"apache2": ("Apache Software License 2.0", "OSI Approved :: Apache Software License")}
lic = licenses[cfg["license"]]
statuses = ["1 - Planning", "2 - Pre-Alpha", "3 - Alpha", "4 - Beta", "5 - Production/Stable"]
py_versions = "3.10 3.11 3.12 3.13".split()
min_python = cfg["min_python"]

setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    license=lic[0],
    classifiers=[
        "Development Status :: " + statuses[int(cfg["status"])],
        "Intended Audience :: " + cfg["audience"].title(),
        "License :: " + lic[1],
        "Natural Language :: " + cfg["language"].title(),
    ] + ["Programming Language :: Python :: " + v for v in py_versions[py_versions.index(min_python):]],
    url=cfg["git_url"],
    packages=setuptools.find_packages(include=["vtom", "vtom.*"]),
    include_package_data=True,
    package_data={"vtom": ["pipelines/*.yaml", "presets/*.yaml",   # `vtom run`'s pipelines and presets (data)
                           "lmms_tasks/*.yaml", "lmms_tasks/_*_yaml", "lmms_tasks/utils.py"]},   # the lmms-eval task pack
    install_requires=_reqs("requirements"),
    extras_require={
        "gpu": _reqs("gpu_requirements"),
        "audio": _reqs("audio_requirements"),
        "decode": _reqs("decode_requirements"),
        "nvdec": _reqs("nvdec_requirements"),
        "dev": _reqs("dev_requirements"),
        "lmms": _reqs("lmms_requirements"),
    },
    python_requires=">=" + min_python,
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    zip_safe=False,
    entry_points={
        "console_scripts": cfg["console_scripts"].split(),
        "nbdev": [f'{cfg["lib_path"]}={cfg["lib_path"]}._modidx:d'],
        "lmms_eval.models": cfg["lmms_entry_points"].split(),
    },
    author=cfg["author"],
    author_email=cfg["author_email"],
    description=cfg["description"],
    keywords=cfg["keywords"],
)
