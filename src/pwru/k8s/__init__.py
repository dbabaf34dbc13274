"""``pwru k8s``: pwru as a Pod on one node or a DaemonSet on every node of a Kubernetes cluster, the events of all
nodes merged into one output with the node's name added.

- :mod:`pwru.k8s.options`: ``pwru k8s`` arguments -> :class:`~pwru.k8s.options.K8sOptions`; the pwru flags among
  them are checked by pwru's own parser (:mod:`pwru.flags`) before anything is created.
- :mod:`pwru.k8s.manifest`: the Pod and DaemonSet manifests (plain dicts; ``deploy/k8s/`` holds them as files).
- :mod:`pwru.k8s.cluster`: what the runner needs of a cluster (:class:`~pwru.k8s.cluster.Cluster`), a pod's state
  read from the Kubernetes client's ``V1Pod``, and :class:`~pwru.k8s.cluster.KubeCluster`, the narrow typed
  wrapper over the (untyped) official ``kubernetes`` client, an optional extra (``pip install 'pwru[k8s]'``).
- :mod:`pwru.k8s.merge`: one node's JSON lines -> the merged output (JSON with ``node`` added, or text).
- :mod:`pwru.k8s.runner`: create, wait until every pod is ready (with progress), stream, delete on every exit.
"""
