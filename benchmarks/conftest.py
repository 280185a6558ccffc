import os
import sys

# make `import peers` work whichever directory pytest is started from
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
