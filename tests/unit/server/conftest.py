"""Fixtures for the server's unit tests: a World (registry + operations over real memfds)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bufbroker_broker import mapping_types
from tests.unit.server.world import ScriptedType, World


@pytest.fixture
def world() -> Iterator[World]:
    world = World()
    yield world
    world.close()


@pytest.fixture
def scripted() -> Iterator[ScriptedType]:
    """A plugin type registered for one test, then removed from the type registry."""
    mapping_types.load_mapping_types()
    saved = dict(mapping_types.MAPPING_TYPES)
    scripted = mapping_types.register_mapping_type(ScriptedType())
    yield scripted
    mapping_types.MAPPING_TYPES.clear()
    mapping_types.MAPPING_TYPES.update(saved)
