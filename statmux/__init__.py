"""statmux: statistical multiplexing with model parallelism (AlpaServe) as a Kubernetes operator.

`statmux` is a regular package. Its subpackages `placement`, `runtime` and `operator` are
symlinks to the top-level folders of the same names, so that:
- `import statmux.x` always loads files from the checkout that `statmux` itself came from
  (a namespace package would merge every checkout on sys.path into one `__path__`);
- mypy, ruff and IDEs follow the imports through the symlinks with no mapping;
- the top-level folders have no `__init__.py`, so running Python from the repository root
  can never shadow the standard library's `operator` module.
"""
