import sys

from fedmq.entry import main

sys.exit(main())
