"""The demos' generated datasets: skin patches (`demos.skin`, make demo) and steel strips (`demos.steel`,
make demo-steel and the steel benchmarks). Generators only: nothing here trains or serves."""
