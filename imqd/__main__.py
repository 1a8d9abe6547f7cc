from imqd.cli import main
import sys
sys.exit(main())
