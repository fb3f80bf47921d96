"""Distillation methods, one module per published algorithm (installed as ``kdbench.methods``).

Every module here is imported when the method registry is first used; a
module registers its class with :func:`kdbench.method.register_method`.
Third-party packages register through the ``kdbench.methods`` entry point.
"""
