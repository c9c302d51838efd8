"""The teacher store: run the teachers once over K augmented views of the training set, distil many times.

``kdgraph teach SPEC`` (:func:`kdgraph.teach.teach`, which hands a resolved plan to
:func:`kdgraph.store.writer.write_store`) writes, per image and view, the numbers that rebuild the view's exact pixels
and the teachers' outputs (logits, all or top-k; the tapped layers, pooled or whole), in checksummed safetensors
shards with a JSON manifest; ``teacher.store: PATH`` trains from it (:class:`kdgraph.store.replay.TeacherStore`): no
teacher forward, the same pixels. docs/store.md.

Modules: ``records`` (one record's tensors: names, dtypes, top-k replay), ``manifest`` (the files: manifest,
shards, checksums), ``fingerprint`` (what a store must agree on with a spec), ``record_layout`` (what a record
holds, the store's size and its limits), ``writer`` (the writer), ``replay`` (the reader, which ``kdgraph.plan``
opens while it resolves). The store depends only downward (data, graph, session, eval, spec), never on the plan
or on training. Import the modules directly; this package imports nothing.
"""
