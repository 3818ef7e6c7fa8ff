"""The topology: model, problems, YAML source, schema, rules, build, diff.

Pure: no threads, no engine imports. `runner.log` and `runner.broker` may
import `runner.topology.model` only.
"""
