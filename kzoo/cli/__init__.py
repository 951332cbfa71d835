"""The `kzoo` command line (`kzoo.cli.main`): recipes, `chat`, `rate`, `ls` and `cp`.

Example:
```python
from kzoo.cli.main import main
main(["ls"])
```
"""
