from glint_track.cli import main

main()
