"""disagglab: the control side of the disaggregated-inference experiment pipeline.

Node-side code lives in scripts/ and remote/ and never imports this package.
"""

__version__ = "0.1.0"
