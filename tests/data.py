"""Where the tests find the shared benchmark datasets: one setting for every test module.

`SREGRAPH_SHARED_DATA` names the folder that holds nab/, nezha-ob/, nezha-tt/ and petshop/; without it, the
`shared/data` folder beside this checkout (as CI lays it out). Tests that need a dataset skip, naming this
variable, when it is not there.
"""

from __future__ import annotations

import os
from pathlib import Path

SHARED_DATA = Path(
    os.environ.get("SREGRAPH_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)
