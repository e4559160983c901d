"""`gpuadmit simulate`: replay a GPU trace through the margin engine and peer policies.

``trace`` reads traces, ``replay`` runs the discrete-event replay, ``peers`` holds the peer
policies, ``report`` and ``plots`` turn results into figures.
"""
