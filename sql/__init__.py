"""The migrations, shipped as the data package ``cqox_platform.schema.sql``.

The ``.sql`` files here are the source. ``[tool.setuptools.package-dir]`` in pyproject.toml maps the package
``cqox_platform.schema.sql`` to this directory: a wheel holds it at ``cqox_platform/schema/sql/``, an editable
install imports it from here. This file makes it a regular package because an editable install resolves a mapped
package through its ``__init__.py``, and ``importlib.resources.files`` then gives one real directory
(``cqox_platform.schema.migrations.SQL_DIR``). Nothing imports code from here.
"""
