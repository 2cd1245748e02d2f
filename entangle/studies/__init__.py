"""The paper's experiments (Table 1/2/5/6 and Figures 2-4, transfer, different mistakes, the
planted study, one classifier): each plans its artifacts, builds them through the store and
returns a complete result; none writes files (the report layer and the binaries do)."""
