"""The codec's insides; :mod:`thespian_dd.codec` is its public face (the envelope, versions,
checksums), and each format the codec reads lives here in a module of its own:

- :mod:`~thespian_dd._codec.registry`: the data types the codec knows, built-in and registered,
  their names and format-2 codes.
- :mod:`~thespian_dd._codec.format1`: format 1, the canonical tree of ``[type name, state]``
  (written by :mod:`thespian_dd._canonical`).
- :mod:`~thespian_dd._codec.format2`: format 2, canonical CBOR (its layout, and writing it);
  :mod:`~thespian_dd._codec.format2_read` reads it back, refusing every other spelling.
- :mod:`~thespian_dd._codec.checks`: the structural checks both formats' readers share.
"""
