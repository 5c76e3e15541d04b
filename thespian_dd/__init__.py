"""thespian_dd: Akka-style Distributed Data for Thespian, durable through SQLAlchemy.

This module is the public API: everything a user may touch is named in ``__all__``.  Each data
type lives in a module of its own (``ls thespian_dd/`` is the catalogue); modules whose names
start with ``_`` are internals.
"""

import logging

from thespian_dd._runtime import schema as _schema
from thespian_dd.client import (
    AsyncClient,
    AsyncSubscription,
    Change,
    Client,
    DeleteError,
    GetError,
    KeyDeletedError,
    ModifyError,
    NoReplyError,
    ReplicatorError,
    StoreError,
    Subscription,
    UpdateTimeoutError,
)
from thespian_dd.codec import register_data_type
from thespian_dd.data import (
    DeltaReplicatedData,
    RemovedNodePruning,
    ReplicaId,
    ReplicatedData,
    RequiresCausalDelivery,
)
from thespian_dd.flag import Flag
from thespian_dd.gcounter import GCounter
from thespian_dd.gset import GSet
from thespian_dd.keys import (
    FlagKey,
    GCounterKey,
    GSetKey,
    Key,
    LWWMapKey,
    LWWRegisterKey,
    MVRegisterKey,
    ORMapKey,
    ORMultiMapKey,
    ORSetKey,
    PNCounterKey,
    PNCounterMapKey,
)
from thespian_dd.lwwmap import LWWMap
from thespian_dd.lwwregister import LWWRegister
from thespian_dd.messages import (
    Changed,
    DataDeleted,
    Delete,
    Deleted,
    DeleteResponse,
    DeleteSuccess,
    Expired,
    FlushChanges,
    Get,
    GetDataDeleted,
    GetFailure,
    GetKeys,
    GetReplicaCount,
    GetResponse,
    GetStats,
    GetStatus,
    GetSuccess,
    InvalidRequest,
    Keys,
    ModifyFailure,
    NotFound,
    PeerStatus,
    ReadAll,
    ReadConsistency,
    ReadFrom,
    ReadLocal,
    ReadMajority,
    ReplicaCount,
    ReplicationDeleteFailure,
    Stats,
    Status,
    StoreFailure,
    Subscribe,
    Unsubscribe,
    Update,
    UpdateDataDeleted,
    UpdateResponse,
    UpdateSuccess,
    UpdateTimeout,
    WriteAll,
    WriteConsistency,
    WriteLocal,
    WriteMajority,
    WriteTo,
)
from thespian_dd.mvregister import MVRegister
from thespian_dd.ormap import ORMap
from thespian_dd.ormultimap import ORMultiMap
from thespian_dd.orset import ORSet
from thespian_dd.pncounter import PNCounter
from thespian_dd.pncountermap import PNCounterMap
from thespian_dd.replicator import REPLICATOR_NAME, Replicator, Settings, start

__all__ = [
    "REPLICATOR_NAME",
    "AsyncClient",
    "AsyncSubscription",
    "Change",
    "Changed",
    "Client",
    "DataDeleted",
    "Delete",
    "DeleteError",
    "DeleteResponse",
    "DeleteSuccess",
    "Deleted",
    "DeltaReplicatedData",
    "Expired",
    "Flag",
    "FlagKey",
    "FlushChanges",
    "GCounter",
    "GCounterKey",
    "GSet",
    "GSetKey",
    "Get",
    "GetDataDeleted",
    "GetError",
    "GetFailure",
    "GetKeys",
    "GetReplicaCount",
    "GetResponse",
    "GetStats",
    "GetStatus",
    "GetSuccess",
    "InvalidRequest",
    "Key",
    "KeyDeletedError",
    "Keys",
    "LWWMap",
    "LWWMapKey",
    "LWWRegister",
    "LWWRegisterKey",
    "MVRegister",
    "MVRegisterKey",
    "ModifyError",
    "ModifyFailure",
    "NoReplyError",
    "NotFound",
    "ORMap",
    "ORMapKey",
    "ORMultiMap",
    "ORMultiMapKey",
    "ORSet",
    "ORSetKey",
    "PNCounter",
    "PNCounterKey",
    "PNCounterMap",
    "PNCounterMapKey",
    "PeerStatus",
    "ReadAll",
    "ReadConsistency",
    "ReadFrom",
    "ReadLocal",
    "ReadMajority",
    "RemovedNodePruning",
    "ReplicaCount",
    "ReplicaId",
    "ReplicatedData",
    "ReplicationDeleteFailure",
    "Replicator",
    "ReplicatorError",
    "RequiresCausalDelivery",
    "Settings",
    "Stats",
    "Status",
    "StoreError",
    "StoreFailure",
    "Subscribe",
    "Subscription",
    "Unsubscribe",
    "Update",
    "UpdateDataDeleted",
    "UpdateResponse",
    "UpdateSuccess",
    "UpdateTimeout",
    "UpdateTimeoutError",
    "WriteAll",
    "WriteConsistency",
    "WriteLocal",
    "WriteMajority",
    "WriteTo",
    "register_data_type",
    "start",
    "store_metadata",
]

store_metadata = _schema.store_metadata
"""The SQLAlchemy ``MetaData`` of a store's two tables, ``thespian_dd_entries`` and
``thespian_dd_nodes``, for your own migrations (alembic) in the same database to leave out or
include.  Their schema changes only with the store's schema version, through ``python -m
thespian_dd migrate`` (see the operations guide, upgrading)."""

__version__ = "0.1.0.dev0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
