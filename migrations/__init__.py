"""Alembic migrations of the dsaudit catalog, shipped inside the package.

`catalog.db` runs them on open (``Path(migrations.__file__).parent`` is the script location), so
they are found after a plain ``pip install``, not only from a checkout. ``alembic.ini`` here serves
developers running ``alembic -c migrations/alembic.ini revision ...`` from the repository.
"""
