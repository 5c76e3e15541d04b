"""thespian_dd: Akka-style Distributed Data for Thespian, durable through SQLAlchemy.

This module is the public API: everything a user may touch is named in ``__all__``.  Each data
type lives in a module of its own (``ls thespian_dd/`` is the catalogue); modules whose names
start with ``_`` are internals.
"""

import logging

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
    "Changed",
    "DataDeleted",
    "Delete",
    "DeleteResponse",
    "DeleteSuccess",
    "Deleted",
    "DeltaReplicatedData",
    "Expired",
    "Flag",
    "FlushChanges",
    "GCounter",
    "GSet",
    "Get",
    "GetDataDeleted",
    "GetFailure",
    "GetKeys",
    "GetReplicaCount",
    "GetResponse",
    "GetStats",
    "GetStatus",
    "GetSuccess",
    "InvalidRequest",
    "Keys",
    "LWWMap",
    "LWWRegister",
    "MVRegister",
    "ModifyFailure",
    "NotFound",
    "ORMap",
    "ORMultiMap",
    "ORSet",
    "PNCounter",
    "PNCounterMap",
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
    "RequiresCausalDelivery",
    "Settings",
    "Stats",
    "Status",
    "StoreFailure",
    "Subscribe",
    "Unsubscribe",
    "Update",
    "UpdateDataDeleted",
    "UpdateResponse",
    "UpdateSuccess",
    "UpdateTimeout",
    "WriteAll",
    "WriteConsistency",
    "WriteLocal",
    "WriteMajority",
    "WriteTo",
    "register_data_type",
    "start",
]

__version__ = "0.1.0.dev0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
