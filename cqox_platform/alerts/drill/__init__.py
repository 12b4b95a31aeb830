"""The alert drill: proves that each alert family reaches a receiver, by injecting one safe, reversible fault.

``runner`` runs the families and measures injection -> arrival; ``faults`` injects and undoes each fault;
``journal`` records a fault before it is injected so a killed drill's faults are undone later (``stack up`` and the
next drill recover it); ``bounds`` derives from the loaded rules and routing how long an alert may take."""
