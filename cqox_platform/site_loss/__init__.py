"""The site-loss drill: recover the platform from the DR region's copy and the escrowed unseal material alone.

``plan`` is what the observer (which may still see the primary site) hands over: the DR region's coordinates and
read-only key file, the unseal key file, the cluster's identity, the primary's position when the drill started,
and the restore point to prove. ``isolation`` builds the environment the recovery runs in and refuses any other.
``recovery`` is that recovery, run in a process of its own: a scratch OpenBao from the newest DR snapshot, the
DR copy's newest usable base backup restored and replayed, proven at the point and then replayed to the end of
the DR copy's WAL, with the RTO per phase, the achieved RPO and a projection to a large database.
"""
