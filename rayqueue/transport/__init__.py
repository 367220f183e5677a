"""How calls reach a partition: through Ray, or over the direct socket (``wire``)
that each partition opens; ``drivers`` run the client's plans over them.
"""
