from glint_track.cli import run

run()
